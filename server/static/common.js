// What the pages share: the names they show for inputs, and whether a player plays HLS.
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

// The browser plays HLS in a <video> itself (Chromium, Safari); no player library is loaded.
function canPlayHls(video) {
  return video.canPlayType("application/vnd.apple.mpegurl") !== "";
}
