// What the pages share: the names they show for inputs, and playing HLS (natively or with hls.js).
"use strict";

// The input as a person knows it: its file name; never the query string (it may hold keys).
function inputName(url) {
  try {
    const u = new URL(url);
    const name = decodeURIComponent(u.pathname.split("/").filter(Boolean).pop() || "");
    return { name: name || u.host, title: u.origin + u.pathname };
  } catch (e) {
    return { name: url.split(/[?#]/)[0].split("/").pop(), title: url.split(/[?#]/)[0] };
  }
}

// How a <video> plays HLS here: "native" where the browser plays it itself (Chromium 141 on,
// Safari), "library" through hls.js over Media Source Extensions (Firefox, older Chromium),
// which the service serves at /player/hls.js and the page loads only then; null: neither.
function hlsPlayback(video) {
  if (video.canPlayType("application/vnd.apple.mpegurl") !== "") return "native";
  return window.MediaSource || window.ManagedMediaSource ? "library" : null;
}

let hlsLibrary = null;  // hls.js loading or loaded: a promise of its Hls class

function loadHlsLibrary() {
  if (hlsLibrary) return hlsLibrary;
  hlsLibrary = new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = "/player/hls.js";
    script.onload = () => {
      if (window.Hls && window.Hls.isSupported()) resolve(window.Hls);
      else reject(new Error("hls.js cannot play in this browser"));
    };
    script.onerror = async () => {
      hlsLibrary = null;  // asked again next time
      script.remove();
      let why = "the service did not serve it";
      try {
        const r = await fetch(script.src);
        why = (await r.json()).detail || why;
      } catch (e) { /* the generic reason */ }
      reject(new Error(why));
    };
    document.head.appendChild(script);
  });
  return hlsLibrary;
}

// Why this page cannot play HLS in `video` (null: it can; hls.js is loaded first where the
// browser needs it).
async function hlsUnavailable(video) {
  const way = hlsPlayback(video);
  if (way === "native") return null;
  if (way === null) return "This browser cannot play HLS (it has neither HLS nor Media Source Extensions)";
  try {
    await loadHlsLibrary();
    return null;
  } catch (e) {
    return "This browser cannot play HLS itself, and its player library is unavailable: " + e.message;
  }
}

// What the player plays: the playlist's link (hls.js gives the <video> a blob: URL of its own).
function playerSource(player) {
  return player.dataset.source || player.currentSrc || player.src;
}

// Whether playback has failed: a media error, or hls.js gave up (a refused link, say).
function playerFailed(player) {
  return player.error !== null || player.hlsFailure !== undefined;
}

// What went wrong, for the page to say: the media error's code, or hls.js's details.
function playerFailure(player) {
  if (player.error) return "media error " + player.error.code;
  return player.hlsFailure || "media error ?";
}

// How long a player waits for one segment (ms): making one on a slow machine takes minutes.
const SEGMENT_WAIT_MS = 10 * 60 * 1000;

// Stops the player's hls.js, if any (its events are ignored from here on).
function dropHls(player) {
  const hls = player.hls;
  player.hls = undefined;
  if (hls) hls.destroy();
}

// Plays `url` in the player from `at` seconds, playing or paused as asked. Through hls.js
// (where hlsUnavailable found it needed), subtitles stay the page's <track> elements and the
// audio rendition is the master playlist's default, as with the browser's own player; a fatal
// error of hls.js is an "error" event of the player.
async function playFrom(player, url, at, play) {
  player.dataset.source = url;
  const turn = (player.hlsTurn = (player.hlsTurn || 0) + 1);  // the latest call wins
  dropHls(player);
  player.hlsFailure = undefined;
  if (hlsPlayback(player) === "native") {
    player.src = url;
    if (at > 0) player.addEventListener("loadedmetadata", () => { player.currentTime = at; }, { once: true });
  } else {
    const Hls = await loadHlsLibrary();
    if (turn !== player.hlsTurn) return undefined;  // a later call took the player meanwhile
    dropHls(player);
    const hls = new Hls({
      enableWebVTT: false,
      enableIMSC1: false,
      startPosition: at > 0 ? at : -1,
      // A segment of a video on request is made when asked for and sent whole: its first byte
      // may come minutes later. hls.js's own limits (10 s, then retries) would abandon it, and
      // the service drops work its player abandons: it would never be made.
      fragLoadPolicy: {
        default: {
          maxTimeToFirstByteMs: Infinity,
          maxLoadTimeMs: SEGMENT_WAIT_MS,
          timeoutRetry: null,
          errorRetry: { maxNumRetry: 6, retryDelayMs: 1000, maxRetryDelayMs: 8000 },
        },
      },
    });
    hls.on(Hls.Events.ERROR, (event, data) => {
      if (!data.fatal || player.hls !== hls) return;
      const status = data.response && data.response.code ? " " + data.response.code : "";
      player.hlsFailure = "hls.js: " + data.details + status;
      player.dispatchEvent(new Event("error"));
    });
    player.hls = hls;
    hls.loadSource(url);
    hls.attachMedia(player);
  }
  return play ? player.play() : undefined;
}

// Plays audio rendition `number` where the player is. Through hls.js, its audio track of that
// rendition's playlist, switched in place (nothing else is fetched again; the link it plays
// keeps its signature, so a renewal still comes when that one runs out); with the browser's
// own player, which offers no choice, `url` (the master playlist with that rendition the
// default) from the player's position, playing on if it played.
function chooseAudio(player, url, number) {
  const hls = player.hls;
  const track = hls ? hls.audioTracks.findIndex((t) => audioRendition(t.url) === number) : -1;
  if (track < 0) return playFrom(player, url, player.currentTime, !player.paused);
  player.dataset.source = withQuery(player.dataset.source, { audio: number });
  hls.audioTrack = track;
  return Promise.resolve();
}

// The audio rendition whose playlist `uri` is (a job folder's audio_N.m3u8, a video's
// audio_N/index.m3u8): its number; null for another playlist.
function audioRendition(uri) {
  const path = new URL(uri, location.href).pathname;
  const match = /\/audio_(\d+)(?:\.m3u8|\/index\.m3u8)$/.exec(path);
  return match ? Number(match[1]) : null;
}

// When a signed media link stops opening (seconds since the epoch): links read
// /media/<expiry>/<signature>/…; null for an unsigned link (a server without a token).
function linkExpiry(url) {
  const match = /^\/media\/(\d+)\//.exec(new URL(url, location.href).pathname);
  return match ? Number(match[1]) : null;
}

// Whether the player holds what it plays from here to its last second (it asks for no more).
function bufferedToEnd(player) {
  const t = player.currentTime, ranges = player.buffered, end = player.duration - 1;
  for (let i = 0; i < ranges.length; i++) {
    if (ranges.start(i) <= t + 0.1 && t <= ranges.end(i)) return ranges.end(i) >= end;
  }
  return false;
}

// The server's clock less the page's (seconds), from a response's Date header (0 without one).
function clockOffset(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  return Number.isNaN(date) ? 0 : (date - Date.now()) / 1000;
}

// A signed link opens for a limited time, so a long video or a long pause would end in refused
// segments. Once the player's link is past half its life, `freshLink()` (the same media, asked
// of the API again: { url, response }) takes its place where the player is: at once when it is
// paused or has failed; while it plays, only if it still has segments to fetch (a swap costs a
// rebuffer), and never in its last second (Chromium may not play on from a seek there). Times
// are the server's (its Date header), whatever the page's clock says.
function keepLinkFresh(player, freshLink) {
  let lifetime = null;  // of the server's links, learnt from a fresh one
  let offset = 0;  // the server's clock less the page's
  let asking = false;
  const src = () => playerSource(player);
  async function check() {
    const expiry = src() ? linkExpiry(src()) : null;
    if (expiry === null || asking || player.ended) return;
    const left = () => expiry - (Date.now() / 1000 + offset);
    const due = () => left() <= lifetime / 2 && (playerFailed(player) ||
      (player.currentTime < player.duration - 1 && (player.paused || !bufferedToEnd(player))));
    if (lifetime !== null && !due()) return;
    asking = true;
    try {
      const got = await freshLink();
      const fresh = got && got.url ? linkExpiry(got.url) : null;
      if (fresh === null) return;
      offset = clockOffset(got.response);
      lifetime = fresh - (Date.now() / 1000 + offset);
      if (linkExpiry(src()) === expiry && fresh > expiry && due()) {
        playFrom(player, got.url, player.currentTime, !player.paused).catch(() => {});
      }
    } catch (e) { /* the next check asks again */ } finally {
      asking = false;
    }
  }
  setInterval(check, 1000);
  player.addEventListener("error", check);
}

// `link` with the query parameters in `values` that are not null (a master playlist's `audio`:
// its audio rendition players start with; Chromium's own player offers no choice of its own
// and plays the group's default).
function withQuery(link, values) {
  const url = new URL(link, location.href);
  for (const [name, value] of Object.entries(values)) {
    if (value !== null) url.searchParams.set(name, String(value));
  }
  return url.pathname + url.search;
}

// Offer audio renditions ({ number, name, language, default }) in `select`; `choice` (its
// label) is shown where there are several to choose from.
function showAudioChoice(choice, select, offered) {
  choice.hidden = offered.length < 2;
  select.replaceChildren(...offered.map((stream) => {
    const option = document.createElement("option");
    option.value = String(stream.number);
    option.textContent = stream.name + (stream.language ? " (" + stream.language + ")" : "");
    option.selected = stream.default;
    return option;
  }));
}
