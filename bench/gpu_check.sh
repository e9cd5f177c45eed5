#!/usr/bin/env bash
# The one call on a lent GPU machine: bench/gpu_check.py at GPU sizes, every table and log under
# $OUT. It installs nothing from the network: run bench/gpu_prepare.sh here first (it fetches
# the wheels the machine lacks into .whl and copies the data into .gpu-data), then call the
# device with carry [".whl", ".gpu-data"] and the command `bash bench/gpu_check.sh`.
# Elsewhere: `bash bench/gpu_check.sh --device cpu` runs the same checks at small sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .gpu-data ]; then
  export CARN_STREAM_TEST_DATA=$PWD/.gpu-data
  export CARN_WEIGHTS=$PWD/.gpu-data/weights/carn_m.pth
fi
if ! python3 -c "import carn_stream.pipeline.media" 2>/dev/null; then
  # carn_stream as it installs (the rooms inside one package), without a build step
  stage=$(mktemp -d)
  cp -r carn_stream "$stage/carn_stream"
  for room in model pipeline server; do ln -s "$PWD/$room" "$stage/carn_stream/$room"; done
  export PYTHONPATH=$stage${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python3 bench/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/log.txt"
