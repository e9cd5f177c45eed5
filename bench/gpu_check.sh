#!/usr/bin/env bash
# One-shot GPU check for a lent CUDA machine: correctness of the CUDA paths, then the pipeline
# benchmark. Installs nothing from the network: carry the cp312 wheels in .whl
# (fetched beforehand with the project's device-wheels helper) and the data under $CARN_STREAM_TEST_DATA.
# Writes its tables to ${OUT:-./gpu-out}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# carn_stream as it installs (the rooms inside one package), without a build step.
stage=$(mktemp -d)
cp -r carn_stream "$stage/carn_stream"
for room in model pipeline server; do ln -s "$PWD/$room" "$stage/carn_stream/$room"; done
export PYTHONPATH=$stage:$PYTHONPATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 - <<'PY' 2>&1 | tee "$out/cuda_checks.txt"
import os, sys, numpy as np, torch
sys.path.insert(0, "bench")
from common import official_model, real_frames
from carn_stream.pipeline.colour import ColourSpec
from carn_stream.pipeline.engine.infer import Engine, EngineConfig
rgb, yuv = ColourSpec("rgb"), ColourSpec("yuv")
model = official_model()
frames = [np.stack(real_frames(160, 90, 4))]
cpu = Engine(model, EngineConfig(device="cpu", precision="fp32")).upscale(frames, rgb, 4, yuv)
def diff(a, b):
    return max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a, b))
for precision in ("fp32", "fp16", "bf16"):
    for graphs in (False, True):
        engine = Engine(model, EngineConfig(device="cuda", precision=precision, cuda_graphs=graphs))
        first = engine.upscale(frames, rgb, 4, yuv)
        again = engine.upscale(frames, rgb, 4, yuv)  # a graph replay when graphs are on
        print(f"cuda {precision} graphs={graphs}: max |cpu - gpu| {diff(cpu, first)}, "
              f"replay identical {diff(first, again) == 0}")
tiled = Engine(model, EngineConfig(device="cuda", precision="fp32", tile=48)).upscale(frames, rgb, 4, yuv)
print("cuda tiled fp32 vs cpu max diff", diff(cpu, tiled))
PY
data=${CARN_STREAM_TEST_DATA:-../shared/data}
for scale in 2 4; do
  python3 -m carn_stream.cli eval --device cuda --data "$data/images/Set5" --scale $scale \
    --precision fp32,fp16,bf16 --weights "${CARN_WEIGHTS:-$data/weights/carn_m.pth}" \
    | tail -n 2 | tee -a "$out/precision_set5.txt"
done
python3 bench/infer.py --device cuda --markdown "$out/infer.md"
python3 bench/pipeline.py --device cuda --precision fp16 --markdown "$out/pipeline.md"
