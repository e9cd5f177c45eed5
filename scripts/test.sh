#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then lint and run the tests.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
# torch is pinned so that pip takes the CPU build where one is provided locally.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0 -e '.[test]'
python3 -m ruff check .
python3 -m pytest "$@"
