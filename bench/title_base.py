"""Does a start that already knows the encoder's losses bring a title's model further?

    python bench/title_base.py WEIGHTS_OUT [--steps 600] [--every 300] [--lr 2e-4]
                                         [--crfs 26,30,34]
    python bench/title_gain.py --init WEIGHTS_OUT --schedule constant --lr 2e-4 --steps 300

Trains CARN-M from the official weights on SunHays80 photos as a streaming service would
store them (no frame of the title): each photo's middle 640x480 panned over 8 frames at 4 px
per frame into one high-quality clip, that clip's x2 copies by x264 at ``--crfs``, and
frames 3 and 6 of each photo's eight as (copy, original) pairs. The photos of the pan clip
(``bench/title_pan.py``) stay out, so that it remains unseen. The training is
``title_gain.py``'s (16 x 48 px LR patches, L1, Adam at a constant ``--lr``); every
``--every`` steps it scores Big Buck Bunny's held-out frames of its CRF 30 copy against the
official weights and writes the weights. ``title_gain.py --init`` then trains a title from
them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, device_name, official_model
from title_gain import SCALE, held_out, score, score_table, title_pairs, train
from title_pan import RATE, SECONDS, SPEED, pan_photos, write_clip

from carn_stream.pipeline.media.delivery import encode_copy
from carn_stream.pipeline.media.images import iter_images
from carn_stream.pipeline.title_frames import read_pairs

WIDTH, HEIGHT, PER_PHOTO, STEP_PX = 640, 480, 8, 4
TAKEN = (3, 6)  #: frames of each photo's eight that become training pairs


def photo_views(exclude: set[str]) -> Iterator[np.ndarray]:
    """Each usable photo's pan, ``PER_PHOTO`` frames of WIDTH x HEIGHT."""
    for name, image in iter_images(DATA / "train" / "SunHays80"):
        h, w = image.shape[:2]
        span = WIDTH + PER_PHOTO * STEP_PX
        if name in exclude or h < HEIGHT or w < span:
            continue
        top, left = (h - HEIGHT) // 2, (w - span) // 2
        for i in range(PER_PHOTO):
            x = left + i * STEP_PX
            yield image[top : top + HEIGHT, x : x + WIDTH]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path, help="the weights (written at every score)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=300)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--crfs", default="26,30,34")
    args = p.parse_args()
    torch.manual_seed(0)
    began = time.monotonic()
    pan = {name for name, _ in pan_photos(round(SECONDS * RATE), SPEED)}
    with tempfile.TemporaryDirectory(prefix="title-base-") as folder:
        source = Path(folder) / "photos.mp4"
        photos = write_clip(source, photo_views(pan), WIDTH, HEIGHT) // PER_PHOTO
        indices = [k * PER_PHOTO + t for k in range(photos) for t in TAKEN]
        pairs = []
        for crf in (int(c) for c in args.crfs.split(",")):
            copy = Path(folder) / f"copy-crf{crf}.mp4"
            encode_copy(source, copy, scale=SCALE, crf=crf, preset="veryfast")
            pairs += [(q.lr, q.hr) for q in read_pairs(source, copy, indices, SCALE)]
    made = time.monotonic() - began
    title = title_pairs(DATA / "video" / "bigbuckbunny.mp4", 30, 48)
    held = [q for q, h in zip(title, held_out(title), strict=True) if h]
    model = official_model()
    generic = score(model, held)
    print(f"# {photos} photos (the pan's {len(pan)} left out), x{SCALE} copies at CRF "
          f"{args.crfs}: {len(pairs)} pairs, made in {made:.0f} s; "
          f"{device_name(torch.device('cpu'))}")  # fmt: skip
    print(f"# official CARN-M on Big Buck Bunny's held-out frames: {generic:.3f} dB\n")
    report = score_table(model, held, generic, "over the official dB", save=args.output)
    train(model, pairs, args.steps, args.lr, "constant", args.every, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
