// The videos page: add a video by URL, see up front whether this machine makes each upscaled
// rendition as fast as it plays (the model's measured speed at the video's size), and play a
// rendition or all of them (natively where the browser can, else with hls.js), through the
// master playlist (with the video's audio and subtitle renditions).
"use strict";

const videosBody = document.getElementById("videos");
const player = document.getElementById("player");
const playerStatus = document.getElementById("player-status");
const paceNotice = document.getElementById("pace");
const listStatus = document.getElementById("list-status");
const formStatus = document.getElementById("form-status");
const audioChoice = document.getElementById("audio-choice");
const audioSelect = document.getElementById("audio");
const REFRESH_MS = 5000;  // the speed is measured as segments are made: shown as it changes
let playing = null;  // { videoId, rendition, audio } in the player (audio: a stream's number)
let listing = null;  // the listing under way (a tick while it runs joins it)

function cell(text, title) {
  const td = document.createElement("td");
  td.textContent = text;
  if (title) td.title = title;
  return td;
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

// What a player of this rendition meets: played as fast as it is made, or waiting for each
// segment (how long, from the measured speed).
function paceWarning(rendition) {
  const pace = rendition.pace;
  if (!pace || pace.keeps_up !== false) return null;
  const factor = pace.source_fps / pace.fps;
  return pace.text + ". Each " + rendition.name + " segment takes about " + factor.toFixed(1) +
    " times its duration to make, so playback pauses for it until it is cached.";
}

function paceLine(rendition) {
  const line = document.createElement("div");
  line.className = "pace";
  if (!rendition.pace) {
    line.textContent = rendition.name + ": copied as it is, no upscaling";
    return line;
  }
  line.textContent = rendition.pace.text;
  if (rendition.pace.keeps_up !== null) {
    line.dataset.keepsUp = String(rendition.pace.keeps_up);
  }
  return line;
}

async function play(video, rendition) {
  const name = inputName(video.url).name;
  const unavailable = await hlsUnavailable(player);
  if (unavailable) {
    playerStatus.textContent = unavailable + "; open " + name +
      "'s playlist in a player that can (Safari, VLC).";
    return;
  }
  const warning = rendition ? paceWarning(rendition) : null;
  paceNotice.hidden = warning === null;
  paceNotice.textContent = warning || "";
  playing = { videoId: video.id, rendition: rendition ? rendition.name : null, audio: null };
  offerAudio(video.audio || []);
  playerStatus.textContent = "Loading " + name + " " + (rendition ? rendition.name : "(all renditions)") + "…";
  const url = masterLink(video, playing);
  for (const old of player.querySelectorAll("track")) old.remove();
  if (subtitlesFor) player.removeEventListener("loadedmetadata", subtitlesFor);
  subtitlesFor = () => { subtitlesFor = null; showSubtitles(video); };
  player.addEventListener("loadedmetadata", subtitlesFor, { once: true });
  playFrom(player, url, 0, true).catch(() => { playerStatus.textContent = "Ready: press play"; });
}

let subtitlesFor = null;  // the pending loadedmetadata listener that adds a video's subtitles

// The video's subtitles as <track> elements (their WebVTT files are timed as the player's
// timeline), unless the player shows the master playlist's subtitle renditions itself.
function showSubtitles(video) {
  const own = Array.from(player.textTracks).some((t) => t.kind === "subtitles" || t.kind === "captions");
  if (own) return;
  for (const subtitle of video.subtitles || []) {
    const track = document.createElement("track");
    track.kind = "subtitles";
    track.label = subtitle.name;
    if (subtitle.language) track.srclang = subtitle.language;
    track.src = subtitle.webvtt;
    track.default = subtitle.default;
    player.appendChild(track);
  }
}

// A choice among the video's audio renditions, where the master playlist offers several.
function offerAudio(offered) {
  showAudioChoice(audioChoice, audioSelect, offered);
}

// The master playlist of what `shown` plays: one rendition (null: all) and the audio rendition
// chosen (null: the first).
function masterLink(video, shown) {
  return withQuery(video.links.master, { rendition: shown.rendition, audio: shown.audio });
}

// Another audio rendition, where the player was (chooseAudio).
audioSelect.addEventListener("change", async () => {
  if (!playing) return;
  const shown = playing;
  shown.audio = Number(audioSelect.value);
  const fresh = await freshLink();
  if (!fresh || playing !== shown) return;  // (another video was chosen meanwhile)
  chooseAudio(player, fresh.url, shown.audio).catch(() => {
    playerStatus.textContent = "Ready: press play";
  });
});

// The link of what the player plays, freshly signed.
async function freshLink() {
  const shown = playing;
  if (!shown) return null;
  const r = await fetch("/videos/" + shown.videoId, { headers: apiHeaders(false) });
  if (!r.ok) return null;
  const video = await r.json();
  const gone = shown.rendition !== null && !video.renditions.some((item) => item.name === shown.rendition);
  return gone ? null : { url: masterLink(video, shown), response: r };
}

function row(video) {
  const tr = document.createElement("tr");
  tr.dataset.id = video.id;
  const input = inputName(video.url);
  tr.appendChild(cell(input.name, input.title));
  tr.appendChild(cell(video.duration.toFixed(1) + " s"));
  const rate = video.frame_rate ? " at " + video.frame_rate.toFixed(2) + " fps" : "";
  tr.appendChild(cell(video.width + "x" + video.height + rate));
  const renditions = document.createElement("td");
  renditions.appendChild(button("Play all", () => play(video, null)));
  for (const rendition of video.renditions) {
    const line = paceLine(rendition);
    line.dataset.rendition = rendition.name;
    line.prepend(button("Play " + rendition.name, () => play(video, rendition)), " ");
    renditions.appendChild(line);
  }
  tr.appendChild(renditions);
  const tune = video.tune;
  const progress = tune.progress !== null && tune.progress !== undefined && tune.state === "running"
    ? " (" + Math.round(100 * tune.progress) + "%)" : "";
  tr.appendChild(cell(tune.state + progress, tune.error || ""));
  return tr;
}

// The list, at most one request at a time; none while the page is hidden.
function refresh() {
  if (document.hidden) return Promise.resolve();
  if (!listing) listing = list().finally(() => { listing = null; });
  return listing;
}

// A fresh list (after a change): once the one under way, if any, has ended.
async function refreshNow() {
  if (listing) await listing;
  return refresh();
}

async function list() {
  try {
    const r = await fetch("/videos?limit=50", { headers: apiHeaders(false) });
    if (!r.ok) {
      const detail = (await r.json().catch(() => ({}))).detail;
      listStatus.textContent = "Cannot list videos: " + (detail || "HTTP " + r.status) +
        (r.status === 401 ? " (enter the API token above)" : "");
      return;
    }
    const page = await r.json();
    videosBody.replaceChildren(...page.items.map(row));
    listStatus.textContent = page.total === 0 ? "No videos yet." :
      page.items.length + " of " + page.total + " videos";
  } catch (e) {
    listStatus.textContent = "Cannot reach the server";
  }
}

async function add(event) {
  event.preventDefault();
  const scales = [...document.querySelectorAll("input[name=scale]:checked")].map((b) => Number(b.value));
  if (scales.length === 0) {
    formStatus.textContent = "Choose at least one scale";
    return;
  }
  const url = document.getElementById("url").value.trim();
  formStatus.textContent = "Fetching and planning…";
  const r = await fetch("/videos", {
    method: "POST", headers: apiHeaders(true), body: JSON.stringify({ url, scales }),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : data.detail;
    formStatus.textContent = "Refused: " + (detail || "HTTP " + r.status);
    return;
  }
  formStatus.textContent = "Added " + inputName(data.url).name;
  await refreshNow();
}

player.addEventListener("playing", () => {
  if (playing) playerStatus.textContent = "Playing " + (playing.rendition || "all renditions");
});
player.addEventListener("waiting", () => {
  if (playing) playerStatus.textContent = "Waiting for the next segment of " + (playing.rendition || "the video") + "…";
});
player.addEventListener("error", () => {
  playerStatus.textContent = "Cannot play this video (" + playerFailure(player) + ")";
});

document.getElementById("video-form").addEventListener("submit", (e) => add(e).catch((err) => {
  formStatus.textContent = "Error: " + err;
}));
keepLinkFresh(player, freshLink);
refresh();
setInterval(refresh, REFRESH_MS);
