// The jobs page: submit a URL, follow progress, play HLS (natively where the browser can, else
// with hls.js) from the first segment on, and compare CARN-M with bicubic on frames of a finished job.
"use strict";

const jobsBody = document.getElementById("jobs");
const player = document.getElementById("player");
const playerStatus = document.getElementById("player-status");
const formStatus = document.getElementById("form-status");
const audioChoice = document.getElementById("audio-choice");
const audioSelect = document.getElementById("audio");
let wanted = null;    // id of a job to play as soon as its first segment exists
let playing = null;   // { job, finished, segments, audio } of the job in the player (audio:
                      // the audio rendition chosen, a stream's number; null: none chosen)
let jobsById = new Map();

function headers() {
  return apiHeaders(true);
}

function label(job) {
  return inputName(job.url).name + " x" + job.scale;
}

async function readPlaylist(job) {
  if (!job.links.playlist) return null;  // a failed or cancelled job serves none
  const r = await fetch(job.links.playlist, { cache: "no-store" });
  if (!r.ok) return null;
  const text = await r.text();
  return {
    finished: text.includes("#EXT-X-ENDLIST"),
    segments: text.split("\n").filter((line) => line && !line.startsWith("#")).length,
  };
}

// A growing playlist is played as a snapshot of its segments so far (a finished playlist
// that the server makes on request): Chromium starts a growing one only from 3 segments on.
function load(job, list, at) {
  const same = playing && playing.job.id === job.id;
  playing = { job, finished: list.finished, segments: list.segments, audio: same ? playing.audio : null };
  if (!same) {
    for (const old of player.querySelectorAll("track")) old.remove();
    showAudioChoice(audioChoice, audioSelect, []);
  }
  if (list.finished && !player.querySelector("track")) showRenditions(job);
  playFrom(player, link(job, playing), at, true).catch(() => { playerStatus.textContent = "Ready: press play"; });
}

// A finished HLS job's master playlist names its text subtitles (subtitles_N.m3u8, each with
// its WebVTT file subtitles_N.vtt beside it) and its audio renditions (audio_N.m3u8), and
// Chromium's own HLS player offers neither: the subtitles become <track> elements, and the
// audio renditions a choice.
async function showRenditions(job) {
  if (!job.links.master) return;
  const master = new URL(job.links.master, location.href);
  const r = await fetch(master, { headers: apiHeaders(false) });
  if (!r.ok || !playing || playing.job.id !== job.id) return;
  const text = await r.text();
  for (const value of masterMedia(text, "SUBTITLES")) {
    const uri = value("URI");
    if (!uri || !/^subtitles_\d+\.m3u8$/.test(uri)) continue;
    const track = document.createElement("track");
    track.kind = "subtitles";
    track.label = value("NAME") || uri;
    if (value("LANGUAGE")) track.srclang = value("LANGUAGE");
    track.src = new URL(uri.replace(/\.m3u8$/, ".vtt"), master).href;
    track.default = value("DEFAULT") === "YES";
    player.appendChild(track);
  }
  const audio = [];
  for (const value of masterMedia(text, "AUDIO")) {
    const number = audioRendition(value("URI") || "");
    if (number === null) continue;
    audio.push({ number, name: value("NAME"), language: value("LANGUAGE"),
                 default: playing.audio === null ? value("DEFAULT") === "YES" : playing.audio === number });
  }
  showAudioChoice(audioChoice, audioSelect, audio);
}

// The master playlist's renditions of one TYPE (AUDIO, SUBTITLES): for each, a reader of its
// attributes (null where it has none of that name).
function masterMedia(text, type) {
  return text.split("\n").filter((line) => line.startsWith("#EXT-X-MEDIA:TYPE=" + type + ",")).map(
    (line) => (name) => {
      const match = new RegExp("[:,]" + name + '=(?:"([^"]*)"|([^,]*))').exec(line);
      return match ? (match[1] !== undefined ? match[1] : match[2]) : null;
    });
}

// Another audio rendition, where the player was (chooseAudio).
audioSelect.addEventListener("change", () => {
  if (!playing || !playing.finished) return;
  playing.audio = Number(audioSelect.value);
  chooseAudio(player, link(latest(playing.job), playing), playing.audio).catch(() => {
    playerStatus.textContent = "Ready: press play";
  });
});

// A growing playlist's snapshot; a finished job's playlist, or its master playlist with the
// audio rendition chosen.
function link(job, shown) {
  if (!shown.finished) return job.links.preview + "?n=" + shown.segments;
  return shown.audio === null ? job.links.playlist : withQuery(job.links.master, { audio: shown.audio });
}

// The job's record of the last refresh: its media links are the freshest signed.
function latest(job) {
  return jobsById.get(job.id) || job;
}

async function play(job) {
  wanted = null;  // wanted again below while the job has no segment yet (not asked twice meanwhile)
  const unavailable = await hlsUnavailable(player);
  if (unavailable) {
    playerStatus.textContent = unavailable + "; choose MP4 output and download it instead.";
    return;
  }
  if (job.state === "failed" || job.state === "cancelled") {  // ended before a segment to play
    playerStatus.textContent = "Cannot play " + label(job) + ": the job " + job.state +
      (job.error ? ": " + job.error : "");
    return;
  }
  const list = await readPlaylist(job);
  if (!list || list.segments === 0) {
    wanted = job.id;
    playerStatus.textContent = "Waiting for the first segment of " + label(job) + "…";
    return;
  }
  playerStatus.textContent = "Loading " + label(job) + "…";
  load(job, list, 0);
}

player.addEventListener("playing", () => {
  if (!playing) return;
  playerStatus.textContent = "Playing " + label(playing.job) + (playing.finished ? "" : " (still upscaling)");
});
player.addEventListener("pause", () => {
  if (playing && !player.ended) playerStatus.textContent = "Paused: " + label(playing.job);
});
player.addEventListener("waiting", () => {
  if (playing) playerStatus.textContent = "Buffering " + label(playing.job) + "…";
});
player.addEventListener("error", () => {
  playerStatus.textContent = "Cannot play this output (" + playerFailure(player) + ")";
});
player.addEventListener("ended", () => { continueOrFinish(); });

async function continueOrFinish() {
  if (!playing) return;
  const job = latest(playing.job);
  if (playing.finished) {
    playerStatus.textContent = "Finished playing " + label(job);
    return;
  }
  const list = await readPlaylist(job);
  if (list && (list.segments > playing.segments || list.finished)) {
    playerStatus.textContent = "Loading the next segments of " + label(job) + "…";
    load(job, list, player.currentTime);
    return;
  }
  const state = job.state;
  if (state === "failed" || state === "cancelled") {
    playerStatus.textContent = "Stopped: job " + label(job) + " " + state;
    return;
  }
  playerStatus.textContent = "Waiting for the next segment of " + label(job) + "…";
  setTimeout(continueOrFinish, 1000);
}

async function showCompare(job) {
  const r = await fetch("/jobs/" + job.id + "/compare", { headers: apiHeaders(false) });
  const section = document.getElementById("compare");
  if (!r.ok) return;
  const data = await r.json();
  section.hidden = false;
  const frames = document.getElementById("compare-frames");
  frames.replaceChildren();
  if (!data.frames.length) {
    document.getElementById("compare-title").textContent = label(job) + ": no frames were kept for comparison.";
    return;
  }
  const pick = (n) => {
    document.getElementById("compare-title").textContent =
      label(job) + ", frame " + n + ": the same frame upscaled by plain bicubic and by CARN-M, shown at the same size.";
    document.getElementById("wipe-bicubic").src = data.links[n] + "?kind=bicubic";
    document.getElementById("wipe-carn").src = data.links[n] + "?kind=carn";
    for (const b of frames.children) b.setAttribute("aria-pressed", String(b.dataset.frame === String(n)));
  };
  for (const n of data.frames) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.frame = n;
    b.textContent = "Frame " + n;
    b.onclick = () => pick(n);
    frames.append(b);
  }
  pick(data.frames[0]);
}

function cell(text, cls, title) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  if (title) td.title = title;
  return td;
}

function button(text, cls, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.className = cls;
  b.onclick = onclick;
  return b;
}

function render(jobs) {
  jobsById = new Map(jobs.map((j) => [j.id, j]));
  jobsBody.replaceChildren();
  for (const job of jobs) {
    const tr = document.createElement("tr");
    tr.dataset.id = job.id;
    const p = job.progress;
    const pct = p.frames_total ? Math.floor(100 * p.frames_done / p.frames_total) + "%" : "";
    const input = inputName(job.url);
    tr.append(cell(input.name, "input", input.title), cell(job.cancelling ? "cancelling" : job.state, "state state-" + job.state),
              cell("x" + job.scale), cell(job.format.toUpperCase(), "output"),
              cell(new Date(job.created_at * 1000).toLocaleString(), "created"),
              cell(job.state === "queued" ? "" : p.frames_done + (p.frames_total ? " / " + p.frames_total : "") + " " + pct
                   + (job.segments.total ? " · segments " + job.segments.done + " / " + job.segments.total : ""), "progress"),
              cell(p.fps ? p.fps.toFixed(2) : ""), cell(p.eta_seconds != null ? Math.ceil(p.eta_seconds) + " s" : ""));
    const actions = document.createElement("td");
    if (job.links.playlist && (job.state === "running" || job.state === "succeeded")) {
      actions.append(button("Play", "play", () => play(job)));
    }
    const file = job.links[job.format];  // the finished file of an MP4, MKV or MOV job
    if (file && job.format !== "hls" && job.state === "succeeded") {
      const a = document.createElement("a");
      a.href = file;
      a.textContent = job.format.toUpperCase();
      actions.append(a);
    }
    if (job.state === "succeeded") actions.append(button("Compare", "compare", () => showCompare(job)));
    if ((job.state === "queued" || job.state === "running") && !job.cancelling) {
      actions.append(button("Cancel", "cancel", async () => {
        await fetch("/jobs/" + job.id, { method: "DELETE", headers: headers() });
        refresh();
      }));
    }
    if (job.error) {
      const e = document.createElement("div");
      e.className = "error";
      e.textContent = job.error;
      actions.append(e);
    }
    tr.append(actions);
    jobsBody.append(tr);
    if (wanted === job.id && job.state !== "queued") play(job);
  }
}

async function refresh() {
  try {
    const r = await fetch("/jobs?limit=50", { headers: apiHeaders(false) });
    if (r.ok) render((await r.json()).items);
  } catch (e) { /* the next refresh retries */ }
}

document.getElementById("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {
    url: document.getElementById("url").value,
    scale: Number(document.getElementById("scale").value),
    format: document.getElementById("output").value,
  };
  formStatus.textContent = "Submitting…";
  const r = await fetch("/jobs", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) {
    formStatus.textContent = "Refused: " + (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
    return;
  }
  formStatus.textContent = "Job " + label(data) + " queued";
  if (data.format === "hls") wanted = data.id;
  refresh();
});

setupWipe(document.getElementById("wipe"), document.getElementById("wipe-position"),
          document.getElementById("wipe-carn"), "right");
// The link of what the player plays, freshly signed (the job may be past the listed 50).
async function freshLink() {
  if (!playing) return null;
  const shown = playing;
  const r = await fetch("/jobs/" + shown.job.id, { headers: apiHeaders(false) });
  if (!r.ok) return null;
  const job = await r.json();
  if (playing === shown) shown.job = job;  // its growing playlist is read with fresh links too
  return { url: link(job, shown), response: r };
}

keepLinkFresh(player, freshLink);
refresh();
setInterval(refresh, 1000);
