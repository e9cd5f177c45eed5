// The jobs page: submit a URL, follow progress, play HLS natively where the browser can.
"use strict";

const jobsBody = document.getElementById("jobs");
const player = document.getElementById("player");
const playerStatus = document.getElementById("player-status");
const formStatus = document.getElementById("form-status");
let playing = null;   // id of the job in the player
let wanted = null;    // id of a job to play as soon as its playlist exists

function headers() {
  return apiHeaders(true);
}

function canPlayHls() {
  return player.canPlayType("application/vnd.apple.mpegurl") !== "";
}

async function play(job) {
  if (!canPlayHls()) {
    playerStatus.textContent = "This browser cannot play HLS; download the MP4 of an MP4 job instead.";
    return;
  }
  const url = job.links.playlist;
  const probe = await fetch(url, { method: "GET", cache: "no-store" });
  if (!probe.ok) { wanted = job.id; playerStatus.textContent = "Waiting for the first segment…"; return; }
  // A growing playlist is played from 3 segments on (players start 3 target durations from
  // its end; Chromium refuses fewer); a finished one right away.
  const text = await probe.text();
  const segments = text.split("\n").filter((line) => line && !line.startsWith("#")).length;
  if (!text.includes("#EXT-X-ENDLIST") && segments < 3) {
    wanted = job.id;
    playerStatus.textContent = "Waiting for segments (" + segments + " of 3)…";
    return;
  }
  wanted = null;
  playing = job.id;
  player.src = url;
  playerStatus.textContent = "Playing job " + job.id.slice(0, 8) + (job.state === "running" ? " (still running)" : "");
  try { await player.play(); } catch (e) { playerStatus.textContent += " — press play"; }
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function render(jobs) {
  jobsBody.replaceChildren();
  for (const job of jobs) {
    const tr = document.createElement("tr");
    tr.dataset.id = job.id;
    const p = job.progress;
    const pct = p.frames_total ? Math.floor(100 * p.frames_done / p.frames_total) + "%" : "";
    tr.append(cell(job.id.slice(0, 8)), cell(job.state, "state state-" + job.state), cell("x" + job.scale),
              cell(p.frames_done + (p.frames_total ? " / " + p.frames_total : "") + " " + pct),
              cell(p.fps ? p.fps.toFixed(2) : ""), cell(p.eta_seconds != null ? Math.ceil(p.eta_seconds) + " s" : ""));
    const actions = document.createElement("td");
    if (job.links.playlist && job.state !== "failed" && job.state !== "cancelled") {
      const b = document.createElement("button");
      b.textContent = "Play";
      b.onclick = () => play(job);
      actions.append(b);
    }
    if (job.links.mp4 && job.state === "succeeded") {
      const a = document.createElement("a");
      a.href = job.links.mp4;
      a.textContent = "MP4";
      actions.append(a);
    }
    if (job.state === "queued" || job.state === "running") {
      const c = document.createElement("button");
      c.textContent = "Cancel";
      c.onclick = async () => { await fetch("/jobs/" + job.id, { method: "DELETE", headers: headers() }); refresh(); };
      actions.append(c);
    }
    if (job.error) {
      const e = document.createElement("div");
      e.className = "error";
      e.textContent = job.error;
      actions.append(e);
    }
    tr.append(actions);
    jobsBody.append(tr);
    if (wanted === job.id) play(job);
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
  formStatus.textContent = "Job " + data.id.slice(0, 8) + " queued";
  if (data.format === "hls") wanted = data.id;
  refresh();
});

refresh();
setInterval(refresh, 1000);
