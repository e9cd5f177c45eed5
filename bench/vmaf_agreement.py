"""VMAF by vmaf-torch (what the project ships) against libvmaf (FFmpeg's filter, in PyAV's
wheels for Python 3.12+) on the same luma frames.

    python bench/vmaf_agreement.py torch DIR CLIP...   # Python 3.11+: frames and vmaf-torch
    python3.12 bench/vmaf_agreement.py libvmaf DIR     # needs only PyAV and numpy: libvmaf
    python bench/vmaf_agreement.py compare DIR         # per-frame differences

The first step writes, per clip, the reference luma of 12 consecutive frames and distorted
versions of them (the original size at CRF 22, 30, 38; the half-size copy at CRF 30 upscaled
bicubically) as ``DIR/NAME.npz`` with vmaf-torch's per-frame scores; the second scores the same
planes with libvmaf (model vmaf_v0.6.1, as vmaf-torch) into ``DIR/NAME.libvmaf.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FRAMES = 12


def torch_side(folder: Path, clips: list[Path]) -> None:
    from carn_stream.model.imresize import bicubic_uint8
    from carn_stream.model.vmaf import Vmaf, luma
    from carn_stream.pipeline.media.delivery import encode_copy
    from carn_stream.pipeline.title_frames import frame_count, read_frames

    vmaf = Vmaf()
    for clip in clips:
        total = frame_count(clip)
        window = range(total // 2 - FRAMES // 2, total // 2 + FRAMES // 2)
        ref = read_frames(clip, window)
        sets = {}
        for crf in (22, 30, 38):
            enc = encode_copy(clip, folder / f"{clip.stem}-x1-{crf}.mp4", scale=1, crf=crf)
            sets[f"x1 crf{crf}"] = read_frames(enc.path, window)
        low = encode_copy(clip, folder / f"{clip.stem}-x2-30.mp4", scale=2, crf=30)
        sets["x2 crf30 bicubic"] = {
            i: bicubic_uint8(f, scale=2.0) for i, f in read_frames(low.path, window).items()
        }
        h, w = sets["x2 crf30 bicubic"][window.start].shape[:2]
        ref_y = np.stack([luma(ref[i][:h, :w]) for i in window])
        arrays, scores = {"ref": ref_y}, {}
        for name, frames in sets.items():
            dist_y = np.stack([luma(frames[i][:h, :w]) for i in window])
            arrays[name] = dist_y
            scores[name] = vmaf.scores(list(ref_y), list(dist_y)).tolist()
        np.savez_compressed(folder / f"{clip.stem}.npz", **arrays)
        (folder / f"{clip.stem}.torch.json").write_text(json.dumps(scores, indent=1))
        print(clip.stem, {k: round(float(np.mean(v)), 2) for k, v in scores.items()})


def libvmaf_side(folder: Path) -> None:
    """Each set in a process of its own: libvmaf writes its log when the filter is freed."""
    import subprocess

    for npz in sorted(folder.glob("*.npz")):
        names = [k for k in np.load(npz).files if k != "ref"]
        out = {}
        for name in names:
            log = folder / f"{npz.stem}.{name.replace(' ', '_')}.log.json"
            subprocess.run([sys.executable, __file__, "libvmaf-one", str(npz), name, str(log)],
                           check=True)  # fmt: skip
            out[name] = [f["metrics"]["vmaf"] for f in json.loads(log.read_text())["frames"]]
        (folder / f"{npz.stem}.libvmaf.json").write_text(json.dumps(out, indent=1))
        print(npz.stem, {k: round(float(np.mean(v)), 2) for k, v in out.items()})


def libvmaf_one(npz: Path, name: str, log: Path) -> None:
    import av

    data = np.load(npz)
    ref, dist = data["ref"], data[name]
    n, h, w = ref.shape
    graph = av.filter.Graph()
    args = f"video_size={w}x{h}:pix_fmt=yuv420p:time_base=1/25:pixel_aspect=1/1"
    dist_in, ref_in = graph.add("buffer", args), graph.add("buffer", args)
    vmaf = graph.add("libvmaf", f"log_path={log}:log_fmt=json:n_threads=2")
    sink = graph.add("buffersink")
    dist_in.link_to(vmaf, 0, 0)
    ref_in.link_to(vmaf, 0, 1)
    vmaf.link_to(sink)
    graph.configure()
    for i in range(n + 1):
        for node, planes in ((dist_in, dist), (ref_in, ref)):
            if i == n:
                node.push(None)
                continue
            frame = av.VideoFrame(w, h, "yuv420p")  # the luma as given, neutral chroma
            frame.planes[0].update(np.ascontiguousarray(planes[i]).tobytes())
            for p in (1, 2):
                frame.planes[p].update(bytes([128]) * frame.planes[p].buffer_size)
            frame.pts = i
            node.push(frame)
        while True:
            try:
                sink.pull()
            except (av.BlockingIOError, av.EOFError):
                break


def compare(folder: Path) -> None:
    every = []
    for path in sorted(folder.glob("*.libvmaf.json")):
        stem = path.name.removesuffix(".libvmaf.json")
        lib = json.loads(path.read_text())
        tor = json.loads((folder / f"{stem}.torch.json").read_text())
        for name in lib:
            a, b = np.array(lib[name]), np.array(tor[name])
            diff = np.abs(a - b)
            every += diff.tolist()
            print(f"{stem:<18}{name:<18} libvmaf {a.mean():7.3f}  vmaf-torch {b.mean():7.3f}  "
                  f"|diff| mean {diff.mean():.3f} max {diff.max():.3f}")  # fmt: skip
    print(f"all frames: mean |diff| {np.mean(every):.3f}, max {np.max(every):.3f}, "
          f"{len(every)} frames")


if __name__ == "__main__":
    mode, folder = sys.argv[1], Path(sys.argv[2])
    if mode == "libvmaf-one":
        libvmaf_one(folder, sys.argv[3], Path(sys.argv[4]))
        sys.exit()
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "torch":
        torch_side(folder, [Path(p) for p in sys.argv[3:]])
    elif mode == "libvmaf":
        libvmaf_side(folder)
    else:
        compare(folder)
