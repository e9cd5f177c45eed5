// Names the pages show for inputs.
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
