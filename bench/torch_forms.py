"""How fast eager PyTorch runs CARN-M on this device, by form, memory layout and precision.

    python bench/torch_forms.py [--sizes 320x180x4,176x144x2] [--precisions fp32,bf16]
                                [--repeats 5] [--device cpu]

The forms (``pipeline/engine/backends.py``): the network as trained; its deployed form
(``model/deployed.py``: the exit conv before the last pixel shuffle, cascades as sums of 1x1
convs); the deployed form with the cascades' concatenations kept. Each in the default layout
and channels-last (the weights; the input is laid out as the engine lays it out, a tensor
over HWC pixels, whose convolutions then run channels-last whatever the weights). The
baseline is the network as trained in the default layout, in the same precision: what the
fp32 mode ran before the engine chose a form. The C library's allocator is tuned as
``carn-stream`` tunes it. Rows take turns, each timed
``--repeats`` times (one frame, after one unmeasured run); the table prints each row's best,
its ratio to the baseline and its largest difference from the baseline's output.
To time another CPU's instruction set on this one, set ``ONEDNN_MAX_CPU_ISA`` (and
``ATEN_CPU_CAPABILITY``) before running.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_name, official_model

from carn_stream.allocator import tune_allocator
from carn_stream.pipeline.engine.backends import FORMS, TorchBackend

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_size(text: str) -> tuple[int, int, int]:
    width, height, scale = (int(v) for v in text.lower().split("x"))
    return width, height, scale


def timed_ms(backend: TorchBackend, x: torch.Tensor, scale: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    backend(x, scale)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - began) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="320x180x4,176x144x2", help="WxHxSCALE, comma-separated")
    p.add_argument("--precisions", default="fp32,bf16", help=f"of {', '.join(DTYPES)}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    tune_allocator()  # what `carn-stream` does (unless jemalloc is preloaded)
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "none")
    print(f"# {device_name(device)}; ONEDNN_MAX_CPU_ISA={cap}; {torch.get_num_threads()} threads; "
          f"best of {args.repeats}\n")  # fmt: skip
    model = official_model()
    rows = [(form, layout) for form in FORMS for layout in (False, True)]
    print("| size | precision | form | layout | best ms | x baseline | max diff |")
    print("|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for size in args.sizes.split(","):
            width, height, scale = parse_size(size)
            x = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(0))
            x = x.to(device).permute(0, 3, 1, 2)  # as the engine makes it from HWC frames
            for name in args.precisions.split(","):
                backends = {
                    row: TorchBackend(model, device, DTYPES[name], row[1], row[0]) for row in rows
                }
                reference = backends[rows[0]](x, scale).float()
                diffs = {
                    row: float((b(x, scale).float() - reference).abs().max())
                    for row, b in backends.items()
                }
                best = {row: float("inf") for row in rows}
                for _ in range(args.repeats):
                    for row, backend in backends.items():
                        best[row] = min(best[row], timed_ms(backend, x, scale, device))
                for (form, last), ms in best.items():
                    layout = "channels-last" if last else "default"
                    ratio = best[rows[0]] / ms
                    print(f"| {size} | {name} | {form} | {layout} | {ms:.1f} | {ratio:.2f} | "
                          f"{diffs[(form, last)]:.1e} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
