"""How a title's model gains over the generic one as training goes on, and where it stops.

    python bench/title_gain.py [CLIP] [--crf 30] [--steps 900] [--every 150] [--lr 5e-4]
                               [--schedule cosine|constant] [--oracle] [--frames 48]

The title's copy (x2, x264 at ``--crf``, preset veryfast) and its training pairs are made as
``carn-stream assess`` makes them (48 frames spread over the clip outside frames 60-71, every
7th held out); CARN-M starts from the official weights and trains on 16 x 48 px LR patches
with L1 and Adam, the learning rate constant or on a cosine from ``--lr`` to 0 over
``--steps``. Every ``--every`` steps the held-out frames are scored (PSNR on BT.601 luma;
the seconds column counts from the first step, scoring included).
``--oracle`` also trains on the held-out frames: the gain a model of this size reaches on
frames it has seen, i.e. what more frames or a better choice of them could give at most.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, device_name, official_model

from carn_stream.model.evaluation import Upscaler
from carn_stream.model.inference import upscale_rgb
from carn_stream.model.training_data import PatchBatches, given_pairs
from carn_stream.pipeline.media.delivery import encode_copy
from carn_stream.pipeline.title_frames import frame_count, read_pairs, spread
from carn_stream.pipeline.title_model import heldout_psnr

SCALE, BATCH, PATCH, HOLDOUT_EVERY = 2, 16, 48, 7


def score(model: torch.nn.Module, held) -> float:
    model.eval()
    with torch.inference_mode():
        run: Upscaler = lambda image, s: upscale_rgb(model, image, s)  # noqa: E731
        return heldout_psnr(held, run, SCALE)


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
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="title-gain-") as folder:
        copy = Path(folder) / "copy.mp4"
        encode_copy(args.clip, copy, scale=SCALE, crf=args.crf, preset="veryfast")
        indices = spread(frame_count(copy), args.frames, range(60, 72))
        pairs = read_pairs(args.clip, copy, indices, SCALE)
    is_held = [k % HOLDOUT_EVERY == HOLDOUT_EVERY // 2 for k in range(len(pairs))]
    held = [q for q, h in zip(pairs, is_held, strict=True) if h]
    train = [q for q, h in zip(pairs, is_held, strict=True) if args.oracle or not h]
    model = official_model()
    generic = score(model, held)
    batches = PatchBatches(given_pairs([(q.lr, q.hr) for q in train], SCALE, PATCH), BATCH,
                           PATCH, seed=0)  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), args.lr)
    machine = device_name(torch.device("cpu"))
    print(f"# {args.clip.name}, x{SCALE} x264 CRF {args.crf} copy; {machine}")
    print(
        f"# {len(train)} training frames, {len(held)} held out"
        f"{' (also trained on: oracle)' if args.oracle else ''}; lr {args.lr:g} {args.schedule}"
    )
    print(f"# generic CARN-M on the held-out frames: {generic:.3f} dB\n")
    print("| steps | held-out PSNR dB | gain over generic dB | seconds |")
    print("|---|---|---|---|")
    began = time.monotonic()
    for step in range(args.steps):
        if args.schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        model.train()
        _, low, high = batches[step]
        loss = torch.nn.functional.l1_loss(model(low.float() / 255, SCALE), high.float() / 255)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            tuned = score(model, held)
            print(f"| {step + 1} | {tuned:.3f} | {tuned - generic:+.3f} | "
                  f"{time.monotonic() - began:.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
