"""How a title's model gains over the generic one as training goes on, and where it stops.

    python bench/title_gain.py [CLIP] [--crf 30] [--steps 900] [--every 150] [--lr 5e-4]
                               [--schedule cosine|constant] [--oracle] [--frames 48]
                               [--init WEIGHTS] [--loss l1|l2] [--amp off|bf16]
                               [--batch 16] [--channels-last]

The title's copy (x2, x264 at ``--crf``, preset veryfast) and its training pairs are made as
``carn-stream assess`` makes them (48 frames spread over the clip outside frames 60-71, every
7th held out); CARN-M starts from the official weights and trains on ``--batch`` (16) x 48 px
LR patches with L1 (or ``--loss``) and Adam, the learning rate constant or on a cosine from
``--lr`` to 0 over ``--steps``. Every ``--every`` steps the held-out frames are scored (PSNR on
BT.601 luma; the seconds column counts from the first step, scoring included).
``--init`` starts from other weights (the gain stays measured over the official ones).
``--loss l2`` trains on the squared error (what PSNR measures) instead of L1; ``--amp bf16``
runs the training steps under bfloat16 autocast (scoring stays fp32); ``--channels-last``
trains in the channels-last memory layout (oneDNN's own on CPUs).
``--oracle`` also trains on the held-out frames: the gain a model of this size reaches on
frames it has seen, i.e. what more frames or a better choice of them could give at most.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, device_name, official_model

from carn_stream.model import load_weights
from carn_stream.model.evaluation import Upscaler
from carn_stream.model.inference import upscale_rgb
from carn_stream.model.training_data import PatchBatches, given_pairs
from carn_stream.pipeline.media.delivery import encode_copy
from carn_stream.pipeline.title_frames import FramePair, frame_count, read_pairs, spread
from carn_stream.pipeline.title_model import heldout_psnr

SCALE, BATCH, PATCH, HOLDOUT_EVERY = 2, 16, 48, 7


def score(model: torch.nn.Module, held) -> float:
    model.eval()
    with torch.inference_mode():
        run: Upscaler = lambda image, s: upscale_rgb(model, image, s)  # noqa: E731
        return heldout_psnr(held, run, SCALE)


def title_pairs(clip: Path, crf: int, frames: int) -> list[FramePair]:
    """The title's pairs as ``assess`` makes them: its x2 copy at ``crf``, ``frames`` frames
    spread outside the report's window."""
    with tempfile.TemporaryDirectory(prefix="title-gain-") as folder:
        copy = Path(folder) / "copy.mp4"
        encode_copy(clip, copy, scale=SCALE, crf=crf, preset="veryfast")
        indices = spread(frame_count(copy), frames, range(60, 72))
        return read_pairs(clip, copy, indices, SCALE)


def held_out(pairs: list[FramePair]) -> list[bool]:
    """Which pairs are held out (every ``HOLDOUT_EVERY``-th, as ``assess`` holds them)."""
    return [k % HOLDOUT_EVERY == HOLDOUT_EVERY // 2 for k in range(len(pairs))]


def train(
    model: torch.nn.Module,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    steps: int,
    lr: float,
    schedule: str,
    every: int,
    on_score: Callable[[int], None],
    loss: str = "l1",
    amp: str = "off",
    batch: int = BATCH,
    channels_last: bool = False,
) -> None:
    """Train ``model`` on LR patches of ``pairs`` (``loss``, Adam, the rate constant or on a
    cosine to 0 over ``steps``, under bf16 autocast if ``amp`` says so), calling
    ``on_score(step)`` every ``every`` steps and at the end."""
    batches = PatchBatches(given_pairs(pairs, SCALE, PATCH), batch, PATCH, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr)
    criterion = {"l1": torch.nn.functional.l1_loss, "l2": torch.nn.functional.mse_loss}[loss]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    for step in range(steps):
        if schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        model.train()
        _, low, high = batches[step]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            out = model(low.float().div(255).contiguous(memory_format=layout), SCALE)
        error = criterion(out.float(), high.float() / 255)
        optimizer.zero_grad()
        error.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            on_score(step + 1)


def score_table(
    model: torch.nn.Module,
    held: list[FramePair],
    generic: float,
    gain_header: str,
    save: Path | None = None,
) -> Callable[[int], None]:
    """Prints a table's header; returns what prints its row after a step (held-out PSNR, the
    gain over ``generic``, seconds since this call), saving the weights to ``save`` first."""
    print(f"| steps | held-out PSNR dB | {gain_header} | seconds |")
    print("|---|---|---|---|")
    began = time.monotonic()

    def row(step: int) -> None:
        now = score(model, held)
        if save is not None:
            torch.save(model.state_dict(), save)
        print(f"| {step} | {now:.3f} | {now - generic:+.3f} | "
              f"{time.monotonic() - began:.0f} |", flush=True)  # fmt: skip

    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("clip", type=Path, nargs="?", default=DATA / "video" / "bigbuckbunny.mp4")
    p.add_argument("--crf", type=int, default=30)
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--every", type=int, default=150)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--oracle", action="store_true", help="train on the held-out frames too")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--init", type=Path, help="start from these weights (default: the official)")
    p.add_argument("--loss", choices=("l1", "l2"), default="l1")
    p.add_argument("--amp", choices=("off", "bf16"), default="off")
    p.add_argument("--batch", type=int, default=BATCH, help="LR patches a step")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    args = p.parse_args()
    torch.manual_seed(0)
    pairs = title_pairs(args.clip, args.crf, args.frames)
    is_held = held_out(pairs)
    held = [q for q, h in zip(pairs, is_held, strict=True) if h]
    trained_on = [(q.lr, q.hr) for q, h in zip(pairs, is_held, strict=True) if args.oracle or not h]
    model = official_model()
    generic = score(model, held)
    if args.init is not None:
        load_weights(model, args.init)
        print(f"# starting from {args.init.name}: {score(model, held) - generic:+.3f} dB")
    machine = device_name(torch.device("cpu"))
    print(f"# {args.clip.name}, x{SCALE} x264 CRF {args.crf} copy; {machine}")
    print(
        f"# {len(trained_on)} training frames, {len(held)} held out"
        f"{' (also trained on: oracle)' if args.oracle else ''}; lr {args.lr:g} {args.schedule}; "
        f"{args.loss}, amp {args.amp}, batch {args.batch}"
        f"{', channels-last' if args.channels_last else ''}"
    )
    print(f"# generic CARN-M on the held-out frames: {generic:.3f} dB\n")
    report = score_table(model, held, generic, "gain over generic dB")
    train(
        model, trained_on, args.steps, args.lr, args.schedule, args.every, report,
        args.loss, args.amp, args.batch, args.channels_last,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
