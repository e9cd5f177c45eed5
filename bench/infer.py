"""Inference speed per precision mode against a reference-style eager fp32 loop, side by side.

    python bench/infer.py [--device auto|cpu|cuda] [--sizes 320x180x4,...] [--repeats N]
                          [--modes fp32,bf16,ov-bf16,auto] [--markdown FILE]

For each size, real frames (a clip area-downscaled to the LR size) go through:
- reference: the authors' style of inference, one frame at a time: uint8 HWC -> float tensor
  -> CARN-M in fp32 (eager, contiguous) -> clamp -> uint8 on the host, in a separate process
  with the default allocator, as users of the reference code run it;
- the project's engine in each mode: upload, colour conversion, network, 4:2:0 conversion
  and download, as the pipeline runs it.
Printed per row: median and p99 latency per frame, fps, ratio reference / mode, and PSNR of
the mode's luma against the engine's fp32 luma; ``auto`` also names the mode it chose (its
measurement counts as warm-up, not in the times). The header names the CPU features found.
To measure the choices and speed of an older CPU on a newer one, cap the instruction sets for
both the reference and the engine: ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python
bench/infer.py ...`` (the header says so; the engine's CPU features follow the cap).
On CUDA also batched fps, peak GPU memory and the fraction of the measured fp16 matmul peak
reached (CARN-M Mult-Adds x 2 / time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_name, emit_table, official_model, real_frames

from carn_stream.allocator import tune_allocator
from carn_stream.model.complexity import mult_adds
from carn_stream.model.inference import pick_device
from carn_stream.pipeline.colour import ColourSpec
from carn_stream.pipeline.engine.cpu import cpu_features, isa_cap
from carn_stream.pipeline.engine.infer import Engine, EngineConfig

SIZES = ["176x144x2", "320x180x4", "640x360x2", "480x270x4", "960x540x2"]
RGB, OUT = ColourSpec("rgb"), ColourSpec("yuv", bits=8, matrix=1)


def parse_size(text: str) -> tuple[int, int, int]:
    w, h, s = (int(v) for v in text.lower().split("x"))
    return w, h, s


def timed(call, items: list, repeats: int, sync) -> list[float]:
    """Seconds per ``call(item)``, cycling through ``items``, after one warm-up call (which
    also covers int8 quantization and CUDA graph capture)."""
    call(items[0])
    sync()
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        call(items[k % len(items)])
        sync()
        times.append(time.perf_counter() - start)
    return times


def reference_times(device: str, size: tuple[int, int, int], repeats: int) -> list[float]:
    """The reference implementation's loop (plain fp32 eager, one frame at a time, host round
    trip), timed in a fresh process as its users run it: the C library's default allocator,
    nothing preloaded, no tuning."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    w, h, s = size
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from infer import reference_loop; print(json.dumps(reference_loop(*sys.argv[2:])))"
    )
    args = [str(Path(__file__).parent), device, str(w), str(h), str(s), str(repeats)]
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference_loop(device: str, w: str, h: str, scale: str, repeats: str) -> list[float]:
    dev = torch.device(device)
    model = official_model().to(dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    @torch.no_grad()
    def run(frame: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(frame.transpose(2, 0, 1).astype(np.float32) / 255)[None]
        y = model(x.to(dev), int(scale))
        return (y.clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).cpu().numpy()

    return timed(run, real_frames(int(w), int(h), 4), int(repeats), sync)


def upscale(engine: Engine, scale: int, planes: list[np.ndarray]) -> list[np.ndarray]:
    return engine.upscale(planes, RGB, scale, OUT)


def luma_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def peak_flops(device: torch.device) -> float:
    """Measured dense fp16 matmul throughput (FLOP/s): the roofline's compute ceiling."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.float16)
    b = torch.randn(n, n, device=device, dtype=torch.float16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument(
        "--modes",
        help="default: fp32,bf16,ov-fp32,ov-bf16,ov-fp16,int8,auto on CPU; fp32,bf16,fp16 on CUDA",
    )
    parser.add_argument("--repeats", type=int, default=0, help="default 3 on CPU, 50 on CUDA")
    parser.add_argument("--batch", type=int, default=8, help="batched fps on CUDA")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    tune_allocator()  # what `carn-stream` does (unless jemalloc is preloaded)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    cpu_modes = "fp32,bf16,ov-fp32,ov-bf16,ov-fp16,int8,auto"
    modes = (args.modes or ("fp32,bf16,fp16" if cuda else cpu_modes)).split(",")
    repeats = args.repeats or (50 if cuda else 3)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    model = official_model()
    peak = peak_flops(device) if cuda else None
    allocator = "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc tuned"
    header = (
        f"device: {device} ({device_name(device)}), torch {torch.__version__}; engine "
        f"allocator: {allocator}; reference: separate process, default allocator"
    )
    if not cuda:
        header += f"; CPU features: {', '.join(cpu_features()) or 'none of note'}"
        if isa_cap():
            aten = os.environ.get("ATEN_CPU_CAPABILITY", "default")
            header += f" (capped: ONEDNN_MAX_CPU_ISA={isa_cap()}, ATEN_CPU_CAPABILITY={aten})"
    if peak:
        header += f", measured fp16 matmul peak {peak / 1e12:.0f} TFLOP/s"
    print(header, file=sys.stderr)
    rows = []
    cache_dir = Path(tempfile.mkdtemp(prefix="carn-bench-"))
    for size in args.sizes.split(","):
        w, h, scale = parse_size(size)
        frames = real_frames(w, h, 4)
        ref_times = reference_times(str(device), (w, h, scale), repeats)
        ref_ms = statistics.median(ref_times) * 1000
        macs = mult_adds(model, scale, (h * scale, w * scale))
        fp32_y = None
        for mode in modes:
            try:
                config = EngineConfig(
                    device=str(device),
                    precision=mode,
                    cache_dir=cache_dir,  # auto measures afresh, int8 is quantized afresh
                )
                engine = Engine(model, config)
            except (ValueError, RuntimeError) as exc:  # e.g. ov-fp16 without FP16 arithmetic
                print(f"  {size} {mode}: skipped ({exc})", file=sys.stderr)
                continue
            call = partial(upscale, engine, scale)
            times = timed(call, [[f[None]] for f in frames], repeats, sync)
            y = call([frames[0][None]])[0]
            if mode == "fp32":
                fp32_y = y
            label = mode
            if engine.choices:
                label = f"auto ({next(iter(engine.choices.values())).mode})"
            ms = statistics.median(times) * 1000
            p99 = float(np.percentile(times, 99)) * 1000
            row = {
                "size": f"{w}x{h} x{scale}",
                "mode": label,
                "ref_ms": ref_ms,
                "ms": ms,
                "p99_ms": p99,
                "fps": 1000 / ms,
                "speedup": ref_ms / ms,
                "psnr": luma_psnr(y, fp32_y) if fp32_y is not None else float("nan"),
            }
            if cuda:
                batch = [np.stack([frames[k % 4] for k in range(args.batch)])]
                torch.cuda.reset_peak_memory_stats(device)
                btimes = timed(call, [batch], 10, sync)
                row["batch_fps"] = args.batch / statistics.median(btimes)
                row["mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                row["roofline"] = 2 * macs * row["batch_fps"] / peak
            rows.append(row)
            print(f"  {row}", file=sys.stderr)
    lines = [header, ""]
    cols = "| size | mode | reference ms | mode ms p50 | p99 | fps | x reference | PSNR vs fp32 |"
    if cuda:
        cols += f" fps batch {args.batch} | GPU mem GiB | roofline |"
    lines += [cols, "|" + "---|" * (cols.count("|") - 1)]
    for r in rows:
        line = (
            f"| {r['size']} | {r['mode']} | {r['ref_ms']:.1f} | {r['ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['fps']:.1f} | {r['speedup']:.2f} | {r['psnr']:.1f} dB |"
        )
        if cuda:
            line += f" {r['batch_fps']:.0f} | {r['mem_gib']:.2f} | {r['roofline']:.1%} |"
        lines.append(line)
    emit_table("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
