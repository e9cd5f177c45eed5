"""How much of a stored copy's loss is the encoder's, i.e. how much a title's model could win back.

    python bench/title_ceiling.py [CLIP] [--crfs 0,18,26,30,34]

For each CRF, the title's x2 copy (x264, preset veryfast, as ``carn-stream assess`` makes it)
and the held-out frames ``bench/title_gain.py`` scores: PSNR on BT.601 luma against the original
of bicubic and of the generic CARN-M on the copy's frames, and of both on the evaluation
protocol's clean LR (the original downscaled bicubically with antialiasing, no encoder); and
the copy's own luma PSNR against that clean LR. CRF 0 is x264's lossless mode: what is left
there is the downscale's filter and the 4:2:0 chroma, not the encoder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, device_name, official_model
from title_gain import SCALE, held_out, title_pairs

from carn_stream.model.evaluation import degrade, luma_scores
from carn_stream.model.imresize import bicubic_uint8
from carn_stream.model.inference import upscale_rgb
from carn_stream.model.metrics import psnr, rgb_to_y


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("clip", type=Path, nargs="?", default=DATA / "video" / "bigbuckbunny.mp4")
    p.add_argument("--crfs", default="0,18,26,30,34")
    args = p.parse_args()
    model = official_model().eval()
    print(f"# {args.clip.name}, x{SCALE} x264 copies, the 7 held-out frames; "
          f"{device_name(torch.device('cpu'))}\n")  # fmt: skip
    print("| CRF | bicubic, copy | generic CARN-M, copy | bicubic, clean LR | "
          "generic CARN-M, clean LR | copy vs clean LR |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for crf in (int(c) for c in args.crfs.split(",")):
        pairs = title_pairs(args.clip, crf, 48)
        rows = []
        with torch.inference_mode():
            for pair, held in zip(pairs, held_out(pairs), strict=True):
                if not held:
                    continue
                clean = degrade(pair.hr, SCALE)
                rows.append([
                    luma_scores(bicubic_uint8(pair.lr, SCALE), pair.hr, SCALE)[0],
                    luma_scores(upscale_rgb(model, pair.lr, SCALE), pair.hr, SCALE)[0],
                    luma_scores(bicubic_uint8(clean, SCALE), pair.hr, SCALE)[0],
                    luma_scores(upscale_rgb(model, clean, SCALE), pair.hr, SCALE)[0],
                    psnr(rgb_to_y(pair.lr), rgb_to_y(clean)),
                ])  # fmt: skip
        print(f"| {crf} | " + " | ".join(f"{v:.2f} dB" for v in np.mean(rows, axis=0)) + " |",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
