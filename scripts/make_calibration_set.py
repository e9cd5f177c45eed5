"""Make the int8 calibration set that ships with the package, from Big Buck Bunny.

    python scripts/make_calibration_set.py [--video PATH] [--out PATH]

Big Buck Bunny (c) Blender Foundation, CC BY 3.0 (www.bigbuckbunny.org): frames spread over
the clip, area-downscaled to the sizes the service upscales (640x360, 480x270, 320x180), and
square crops of those at fixed random places. The same inputs give the same file, byte for
byte, so the int8 models made from it are the same on every machine. Stored as differences
along each row (modulo 256), which deflate to about half the size of the pixels;
:func:`carn_stream.pipeline.engine.int8.shipped_calibration` adds them up again.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT.parent / "shared" / "data" / "video" / "bigbuckbunny.mp4"
OUT = ROOT / "pipeline" / "engine" / "int8_calibration.npz"
SIZES = ((640, 360), (480, 270), (320, 180))
CROPS, SIDE, FRAMES = 32, 64, 16


def crops(video: Path) -> np.ndarray:
    """(CROPS, SIDE, SIDE, 3) uint8 crops of downscaled frames of ``video``."""
    with av.open(str(video)) as container:
        frames = list(container.decode(video=0))
    picked = [frames[round(i * (len(frames) - 1) / (FRAMES - 1))] for i in range(FRAMES)]
    rng = np.random.default_rng(0)
    out = []
    for i in range(CROPS):
        w, h = SIZES[i % len(SIZES)]
        frame = picked[i % FRAMES].reformat(width=w, height=h, interpolation="AREA")
        rgb = frame.to_ndarray(format="rgb24")
        y, x = rng.integers(h - SIDE + 1), rng.integers(w - SIDE + 1)
        out.append(rgb[y : y + SIDE, x : x + SIDE])
    return np.stack(out)


def write(array: np.ndarray, path: Path) -> None:
    """An .npz holding ``rows`` (the crops' differences along rows), deflated, with fixed
    timestamps (reproducible bytes)."""
    rows = array.copy()
    rows[:, :, 1:] = np.diff(array, axis=2)  # uint8: modulo 256
    buffer = io.BytesIO()
    np.save(buffer, rows, allow_pickle=False)
    info = zipfile.ZipInfo("rows.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=VIDEO)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    write(crops(args.video), args.out)
    print(f"{args.out}: {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
