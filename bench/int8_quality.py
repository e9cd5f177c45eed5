"""int8 against fp32 on the standard sets, and what its first use costs.

    python bench/int8_quality.py [--sets Set5,Set14] [--scales 2,3,4] [--calibration DIR]
                                 [--markdown FILE]

For each scale: quantizes CARN-M with the product's recipe (shipped calibration set, or the
images of ``--calibration``) into a fresh cache, timing the quantization and OpenVINO's first
compile, then runs every image of each set through the fp32 engine and the int8 engine (the
standard protocol: bicubic LR, PSNR on Y, ``scale`` pixels shaved). Under an ISA cap
(``ONEDNN_MAX_CPU_ISA=AVX2``) OpenVINO computes int8 as an AVX2-only CPU does, with its 16-bit
pair sums that can saturate. The sets are for evaluation only: nothing is calibrated or tuned
on them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, device_name, emit_table, official_model

from carn_stream.model.evaluation import evaluate
from carn_stream.pipeline.engine.cpu import cpu_features, isa_cap
from carn_stream.pipeline.engine.infer import Engine, EngineConfig
from carn_stream.pipeline.engine.int8 import Int8Backend
from carn_stream.pipeline.media.images import iter_images


def int8_engine(model, cache: Path) -> Engine:
    engine = Engine(model, EngineConfig(device="cpu", precision="int8", cache_dir=cache))
    engine.backend = Int8Backend(model, cache)
    return engine


def first_use(engine: Engine, scale: int, calibration: Path | None) -> tuple[float, float]:
    """Seconds to quantize ``scale`` and to compile and run a first 128x128 input."""
    from carn_stream.pipeline.calibration import calibrate_from

    start = time.perf_counter()
    if calibration is not None:
        calibrate_from(engine, calibration, scale)
    else:
        engine.backend.prepare(scale)
    quantized = time.perf_counter()
    engine.upscale_rgb(np.zeros((128, 128, 3), np.uint8), scale)
    return quantized - start, time.perf_counter() - quantized


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="Set5,Set14")
    parser.add_argument("--scales", default="2,3,4")
    parser.add_argument("--calibration", type=Path, help="HR images or a video to calibrate on")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    import torch

    model = official_model()
    fp32 = Engine(model, EngineConfig(device="cpu", precision="fp32"))
    header = f"CPU: {device_name(torch.device('cpu'))}, features: {', '.join(cpu_features())}"
    if isa_cap():
        header += f" (capped: ONEDNN_MAX_CPU_ISA={isa_cap()})"
    lines = [header, "", "| set | scale | fp32 dB | int8 loss dB |", "|---|---|---|---|"]
    costs = []
    for scale in (int(s) for s in args.scales.split(",")):
        engine = int8_engine(model, Path(tempfile.mkdtemp(prefix="carn-int8-")))
        quantize_s, compile_s = first_use(engine, scale, args.calibration)
        costs.append(
            f"x{scale}: quantize {quantize_s:.1f} s, first compile and run {compile_s:.1f} s"
        )
        print(costs[-1], file=sys.stderr)
        for name in args.sets.split(","):
            images = list(iter_images(DATA / "images" / name))
            base = evaluate(iter(images), fp32.upscale_rgb, scale).summary()["psnr"]
            loss = base - evaluate(iter(images), engine.upscale_rgb, scale).summary()["psnr"]
            lines.append(f"| {name} | x{scale} | {base:.3f} | {loss:.3f} |")
            print(lines[-1], file=sys.stderr)
    emit_table("\n".join([*lines, "", *costs]), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
