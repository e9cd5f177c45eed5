#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then lint and run the tests.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
# torch is pinned so that pip takes the CPU build where one is provided locally.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0 -e '.[test]'
# The page tests drive Debian's Chromium (Playwright's own browser download is never used).
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
python3 -m ruff check .
python3 -m pytest "$@"
