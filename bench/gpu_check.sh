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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 - <<'PY' 2>&1 | tee "$out/cuda_checks.txt"
import os, sys, numpy as np, torch
sys.path.insert(0, ".")
from pathlib import Path
from model import carn_m, load_weights
from pipeline.colour import ColourSpec
from pipeline.infer import Engine, EngineConfig
data = Path(os.environ.get("CARN_STREAM_TEST_DATA", "../shared/data"))
model = carn_m(); load_weights(model, Path(os.environ.get("CARN_WEIGHTS", data / "weights/carn_m.pth")))
rng = np.random.default_rng(0)
frames = [rng.integers(0, 256, (4, 90, 160, 3), dtype=np.uint8)]
cpu = Engine(model, EngineConfig(device="cpu")).upscale(frames, ColourSpec("rgb"), 4, ColourSpec("yuv"))
for precision in ("fp32", "fp16", "bf16"):
    gpu = Engine(model, EngineConfig(device="cuda", precision=precision)).upscale(
        frames, ColourSpec("rgb"), 4, ColourSpec("yuv"))
    diff = max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(cpu, gpu))
    mean = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(cpu, gpu)])
    print(f"cuda {precision}: max |cpu - gpu| {diff}, mean {mean:.4f}")
tiled = Engine(model, EngineConfig(device="cuda", precision="fp32", tile=48)).upscale(
    frames, ColourSpec("rgb"), 4, ColourSpec("yuv"))
print("cuda tiled vs cpu max diff", max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(cpu, tiled)))
PY
python3 bench/pipeline.py --device cuda --markdown "$out/pipeline.md"
