// Live page: send the camera over WebRTC, show the original and the upscaled stream with stats.
"use strict";

const original = document.getElementById("original");
const upscaled = document.getElementById("upscaled");
const statusLine = document.getElementById("status");
let pc = null;
let sessionId = null;
let statsTimer = null;

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
  pc.onconnectionstatechange = () => { statusLine.textContent = "Connection " + pc.connectionState; };
  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringDone(pc);
  body.sdp = pc.localDescription.sdp;
  const response = await fetch("/webrtc/offer", {
    method: "POST",
    headers: apiHeaders(true),
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) { statusLine.textContent = "Refused: " + answer.detail; stop(); return; }
  sessionId = answer.session_id;
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  document.getElementById("start").disabled = true;
  document.getElementById("stop").disabled = false;
  statsTimer = setInterval(showStats, 1000);
}

async function showStats() {
  if (!sessionId) return;
  const r = await fetch("/webrtc/sessions/" + sessionId, { headers: apiHeaders(false) });
  if (!r.ok) return;
  const s = await r.json();
  document.getElementById("fps").textContent = s.fps.toFixed(1);
  document.getElementById("latency").textContent = s.latency_ms.toFixed(0) + " ms";
  document.getElementById("dropped").textContent = s.dropped;
  document.getElementById("resolution").textContent =
    s.input.join("x") + " → " + s.output.join("x") + (s.input_fraction < 1 ? " (input reduced)" : "");
}

function stop() {
  clearInterval(statsTimer);
  if (pc) pc.close();
  if (original.srcObject) original.srcObject.getTracks().forEach((t) => t.stop());
  original.srcObject = null;
  upscaled.srcObject = null;
  if (sessionId) fetch("/webrtc/sessions/" + sessionId, { method: "DELETE", headers: apiHeaders(false) });
  pc = null;
  sessionId = null;
  document.getElementById("start").disabled = false;
  document.getElementById("stop").disabled = true;
}

document.getElementById("live-form").addEventListener("submit", (e) => start(e).catch((err) => {
  statusLine.textContent = "Error: " + err;
}));
document.getElementById("stop").addEventListener("click", stop);
loadSamples();
window.addEventListener("pagehide", stop);
