"""How long one training step of CARN-M takes on this CPU, by memory layout and precision.

    python bench/train_step.py [--batch 16] [--patch 48] [--steps 10] [--repeats 3]

A step is what the trainer does (forward at x2, L1, backward, clipping, Adam) on random LR
patches. The rows: the default layout in fp32 (the trainer before it went channels-last: the
baseline), channels-last in fp32 (the trainer on a CPU without bf16 in hardware),
channels-last under bf16 autocast (the trainer's ``auto`` on a CPU with it). Each row is timed
``--repeats`` times, the rows taking turns; the table prints each row's best and its ratio to
the baseline's best.
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

ROWS = {
    "default layout, fp32 (baseline)": (torch.contiguous_format, False),
    "channels-last, fp32": (torch.channels_last, False),
    "channels-last, bf16 autocast": (torch.channels_last, True),
}


def step_ms(layout: torch.memory_format, bf16: bool, batch: int, patch: int, steps: int) -> float:
    """Mean milliseconds a step over ``steps`` steps, after 3 unmeasured ones."""
    torch.manual_seed(0)
    low = torch.rand(batch, 3, patch, patch).contiguous(memory_format=layout)
    high = torch.rand(batch, 3, 2 * patch, 2 * patch)
    model = official_model().train().to(memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), 2e-4)
    began = 0.0
    for k in range(steps + 3):
        if k == 3:
            began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(low, 2)
        loss = torch.nn.functional.l1_loss(out.float(), high)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    return (time.perf_counter() - began) / steps * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48, help="LR patch side")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "none")
    print(f"# {device_name(torch.device('cpu'))}; ONEDNN_MAX_CPU_ISA={cap}; "
          f"{args.batch} x {args.patch} px LR patches at x2\n")  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in ROWS}
    for _ in range(args.repeats):
        for name, (layout, bf16) in ROWS.items():
            times[name].append(step_ms(layout, bf16, args.batch, args.patch, args.steps))
    baseline = min(times[next(iter(ROWS))])
    print("| layout, precision | best ms a step | all runs, ms | x baseline |")
    print("|---|---|---|---|")
    for name, runs in times.items():
        print(f"| {name} | {min(runs):.0f} | {' / '.join(f'{t:.0f}' for t in runs)} | "
              f"{baseline / min(runs):.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
