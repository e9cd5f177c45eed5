// Live page: send the camera (or play a sample on the server) over WebRTC; show the upscaled
// stream in a wipe against the original upscaled by this browser's bicubic, with stats.
"use strict";

const original = document.getElementById("original");
const upscaled = document.getElementById("upscaled");
const bicubic = document.getElementById("bicubic");
const statusLine = document.getElementById("status");
const overload = document.getElementById("overload");
const STAT_IDS = ["fps", "latency", "dropped", "resolution"];
let pc = null;
let sessionId = null;
let statsTimer = null;
let drawing = null;

// The original, drawn at the upscaled video's size with the canvas's best smoothing (bicubic
// or better, depending on the browser): what a player's own scaling would show.
function drawBicubic() {
  const w = upscaled.videoWidth, h = upscaled.videoHeight;
  if (w && h && original.videoWidth) {
    if (bicubic.width !== w || bicubic.height !== h) { bicubic.width = w; bicubic.height = h; }
    const ctx = bicubic.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(original, 0, 0, w, h);
  }
  drawing = requestAnimationFrame(drawBicubic);
}

function showSizeChoice() {
  const sample = document.getElementById("source").value.startsWith("sample:");
  document.getElementById("size-field").hidden = sample;  // a sample has its own size
}

// Up front: how fast this machine upscales the chosen size, and whether it keeps up.
async function showPace() {
  const choice = document.getElementById("source").value;
  const query = new URLSearchParams({ scale: document.getElementById("scale").value });
  if (choice.startsWith("sample:")) {
    query.set("sample", choice.slice("sample:".length));
  } else {
    const [width, height] = document.getElementById("size").value.split("x");
    query.set("width", width);
    query.set("height", height);
    query.set("fps", "30");  // what cameras send unless asked otherwise
  }
  const r = await fetch("/webrtc/pace?" + query, { headers: apiHeaders(false) });
  if (r.ok) document.getElementById("pace").textContent = "This machine: " + (await r.json()).text;
}

function clearStats() {
  for (const id of STAT_IDS) document.getElementById(id).textContent = "-";
  overload.hidden = true;
}

function iceGatheringDone(connection) {
  if (connection.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    connection.addEventListener("icegatheringstatechange", () => {
      if (connection.iceGatheringState === "complete") resolve();
    });
  });
}

async function loadSamples() {
  const r = await fetch("/webrtc/samples", { headers: apiHeaders(false) });
  if (!r.ok) return;
  const select = document.getElementById("source");
  for (const name of await r.json()) {
    const option = document.createElement("option");
    option.value = "sample:" + name;
    option.textContent = "Sample: " + name;
    select.append(option);
  }
}

async function start(event) {
  event.preventDefault();
  if (pc !== null) return;  // starting or running already (a double click)
  document.getElementById("start").disabled = true;
  const [width, height] = document.getElementById("size").value.split("x").map(Number);
  const scale = Number(document.getElementById("scale").value);
  const choice = document.getElementById("source").value;
  const body = { type: "offer", scale, source: "camera" };
  pc = new RTCPeerConnection();
  if (choice.startsWith("sample:")) {
    // The server plays the clip: receive the original and the upscaled track, in that order.
    body.source = "sample";
    body.sample = choice.slice("sample:".length);
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = (e) => {
      const target = e.transceiver === pc.getTransceivers()[0] ? original : upscaled;
      target.srcObject = new MediaStream([e.track]);
    };
  } else {
    statusLine.textContent = "Opening the camera…";
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { exact: width }, height: { exact: height } }, audio: false,
    });
    original.srcObject = stream;
    const transceiver = pc.addTransceiver(stream.getVideoTracks()[0], { direction: "sendrecv" });
    try {  // the server scales what it receives: keep the camera's size, drop frames instead
      const params = transceiver.sender.getParameters();
      params.degradationPreference = "maintain-resolution";
      await transceiver.sender.setParameters(params);
    } catch (e) { /* not supported: the browser may lower the resolution under load */ }
    pc.ontrack = (e) => { upscaled.srcObject = new MediaStream([e.track]); };
  }
  const connection = pc;
  connection.onconnectionstatechange = () => {
    if (pc !== connection) return;  // stopped here: this side closed it
    const state = connection.connectionState;
    if (state === "failed" || state === "closed") {  // the camera goes off, the polling stops
      if (state === "closed") sessionId = null;  // closed by the server: nothing to DELETE
      stop();
      statusLine.textContent = "Connection " + state + ": the session has ended";
      return;
    }
    statusLine.textContent = "Connection " + state;
  };
  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringDone(pc);
  body.sdp = pc.localDescription.sdp;
  const response = await fetch("/webrtc/offer", {
    method: "POST",
    headers: apiHeaders(true),
    body: JSON.stringify(body),
  });
  const text = await response.text();
  let answer = null;
  try { answer = JSON.parse(text); } catch (e) { /* a plain-text refusal (a proxy, a guard) */ }
  if (!response.ok || answer === null) {
    stop();
    statusLine.textContent = "Refused: " + (answer && answer.detail ? answer.detail
      : text.trim() || "HTTP " + response.status);
    return;
  }
  sessionId = answer.session_id;
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  document.getElementById("start").disabled = true;
  document.getElementById("stop").disabled = false;
  statsTimer = setInterval(showStats, 1000);
  if (drawing === null) drawing = requestAnimationFrame(drawBicubic);
}

async function showStats() {
  const id = sessionId;
  if (!id) return;
  const r = await fetch("/webrtc/sessions/" + id, { headers: apiHeaders(false) });
  if (id !== sessionId) return;  // stopped meanwhile: keep the cleared numbers
  if (r.status === 404) {  // the server ended it (its frames kept failing, say)
    sessionId = null;  // (nothing left to DELETE)
    stop();
    statusLine.textContent = "The server ended the session";
    return;
  }
  if (!r.ok) return;
  const s = await r.json();
  document.getElementById("fps").textContent = s.fps.toFixed(1);
  document.getElementById("latency").textContent = s.latency_ms.toFixed(0) + " ms";
  document.getElementById("dropped").textContent = s.dropped;
  const sent = s.input.join("x"), out = s.output.join("x");
  document.getElementById("resolution").textContent =
    sent + " → " + out + (s.input_fraction < 1 ? " (input reduced to " + Math.round(100 * s.input_fraction) + "%)" : "");
  overload.hidden = s.keeping_up !== false;
  if (!overload.hidden) {
    const skipping = s.source_fps > 0 && s.fps < s.source_fps / 2;  // else: over the latency budget
    overload.textContent = "This machine cannot keep up at this size: " + (skipping
      ? "it upscales " + s.fps.toFixed(1) + " of the " + s.source_fps.toFixed(1) + " frames per second " +
        "that arrive (" + sent + " sent, " + out + " out), so most frames are skipped."
      : "upscaling one frame takes longer than the latency budget even with the input reduced as far " +
        "as still makes sense (" + sent + " sent, " + out + " out), so frames are being skipped.") +
      " A smaller input size, a lower scale or a server with a GPU would keep up.";
  }
}

function stop() {
  const wasRunning = pc !== null;
  const connection = pc, id = sessionId;
  clearInterval(statsTimer);
  if (drawing !== null) cancelAnimationFrame(drawing);
  drawing = null;
  if (original.srcObject) original.srcObject.getTracks().forEach((t) => t.stop());
  original.srcObject = null;
  upscaled.srcObject = null;
  // The server closes the session first, then this side: closed here first, the server would
  // tear it down on its own and the DELETE would find nothing.
  const closed = id ? fetch("/webrtc/sessions/" + id, { method: "DELETE", headers: apiHeaders(false), keepalive: true })
    : Promise.resolve();
  if (connection) closed.catch(() => {}).finally(() => connection.close());
  pc = null;
  sessionId = null;
  document.getElementById("start").disabled = false;
  document.getElementById("stop").disabled = true;
  clearStats();
  showPace();
  bicubic.getContext("2d").clearRect(0, 0, bicubic.width, bicubic.height);
  const said = statusLine.textContent;
  if (wasRunning && !said.startsWith("Refused") && !said.startsWith("Error")) {
    statusLine.textContent = "Stopped";
  }
}

document.getElementById("live-form").addEventListener("submit", (e) => start(e).catch((err) => {
  statusLine.textContent = "Error: " + err;
  stop();  // the peer connection made so far is closed, and Start works again
}));
document.getElementById("stop").addEventListener("click", stop);
document.getElementById("source").addEventListener("change", showSizeChoice);
for (const id of ["source", "size", "scale"]) {
  document.getElementById(id).addEventListener("change", showPace);
}
setupWipe(document.getElementById("wipe"), document.getElementById("wipe-position"), bicubic, "left");
loadSamples();
showPace();
window.addEventListener("pagehide", stop);
