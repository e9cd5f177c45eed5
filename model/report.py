"""Markdown tables generated from the weights registry (``python -m model.report``).

docs/MODEL.md embeds this output; a test keeps the two equal, so numbers live in one place.
"""

from __future__ import annotations

from model.weights import CARNMWeights


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


if __name__ == "__main__":
    print(metrics_table())
