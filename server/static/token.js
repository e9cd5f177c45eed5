// The API token, entered once in the page's token field and kept in localStorage; every
// request of the pages sends it as "Authorization: Bearer". Media links need none: the API
// hands them out signed.
"use strict";

const TOKEN_KEY = "carn-stream-token";

function apiHeaders(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

(function bindTokenField() {
  const field = document.getElementById("token");
  if (!field) return;
  field.value = localStorage.getItem(TOKEN_KEY) || "";
  field.addEventListener("input", () => {
    const value = field.value.trim();
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  });
})();
