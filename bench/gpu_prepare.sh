#!/usr/bin/env bash
# Run on a machine with PyPI access before the GPU machine's one call (which reaches no
# network): fetch the CPython 3.12 x86-64 wheels that machine lacks (PyAV, aiortc, FastAPI,
# uvicorn and what they need; its image has torch, numpy, prometheus-client), at the versions
# installed here (the ones the project was tested with), into .whl, and
# copy the data the checks read (the official weights, the two clips) into .gpu-data. Both are
# git-ignored and travel with the call: carry .whl and .gpu-data, run `bash bench/gpu_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${CARN_STREAM_TEST_DATA:-../shared/data}
for ignored in /.whl/ /.gpu-data/; do
  grep -qx "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
packages=(av aiortc aioice pyee pylibsrtp google-crc32c dnspython ifaddr pyopenssl cryptography
          cffi pycparser fastapi starlette pydantic pydantic-core annotated-types
          typing-inspection uvicorn)
rm -rf .whl
pinned=$(python3 -c 'import sys, importlib.metadata as m
print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' "${packages[@]}")
for package in $pinned; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_34_x86_64 -d .whl "$package"
done
mkdir -p .gpu-data/weights .gpu-data/video
cp "${CARN_WEIGHTS:-$data/weights/carn_m.pth}" .gpu-data/weights/carn_m.pth
cp "$data/video/bigbuckbunny.mp4" "$data/video/carphone_pristine.mp4" .gpu-data/video/
du -sh .whl .gpu-data
