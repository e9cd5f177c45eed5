"""Markdown tables generated from the weights registry (``python -m carn_stream.model.report``).

docs/MODEL.md and docs/TRAINING.md embed this output; tests keep them equal, so numbers live
in one place.
"""

from __future__ import annotations

from carn_stream.model.weights import CARNMWeights


def metrics_table(entry: CARNMWeights = CARNMWeights.OFFICIAL) -> str:
    meta = entry.value.meta
    lines = [
        "| dataset | scale | PSNR measured | SSIM measured | PSNR paper | SSIM paper | delta dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, by_scale in meta["metrics"].items():
        for scale, (p, s) in by_scale.items():
            pp, ps = meta["paper"][dataset][scale]
            cells = [dataset, f"x{scale}", f"{p:.2f}", f"{s:.4f}", f"{pp:.2f}", f"{ps:.4f}"]
            lines.append("| " + " | ".join([*cells, f"{p - pp:+.2f}"]) + " |")
    return "\n".join(lines)


def bundled_table() -> str:
    """The bundled weights against the official ones and bicubic (docs/TRAINING.md)."""
    bundled = CARNMWeights.BUNDLED.value.meta
    official = CARNMWeights.OFFICIAL.value.meta["metrics"]
    lines = [
        "| dataset | scale | bundled PSNR / SSIM | official PSNR / SSIM | bicubic PSNR / SSIM |",
        "|---|---|---|---|---|",
    ]
    for dataset, by_scale in bundled["metrics"].items():
        for scale, (p, s) in by_scale.items():
            op, os_ = official[dataset][scale]
            bp, bs = bundled["bicubic"][dataset][scale]
            cells = [dataset, f"x{scale}", f"{p:.2f} / {s:.4f}", f"{op:.2f} / {os_:.4f}",
                     f"{bp:.2f} / {bs:.4f}"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(metrics_table())
    print()
    print(bundled_table())
