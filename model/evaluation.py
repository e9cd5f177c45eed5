"""The standard SR evaluation protocol.

HR cropped to a multiple of the scale; LR = MATLAB-style bicubic downscale with antialiasing,
rounded to 8 bits; SR clamped and rounded to 8 bits; PSNR and SSIM on the rounded BT.601 luma
with ``scale`` pixels shaved from each border. Bicubic upscaling of the same LR is measured
side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from carn_stream.model.imresize import bicubic_uint8
from carn_stream.model.metrics import psnr, rgb_to_y, shave, ssim

Upscaler = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class ImageScore:
    name: str
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float


@dataclass
class EvaluationReport:
    scale: int
    scores: list[ImageScore] = field(default_factory=list)

    def _mean(self, key: str) -> float:
        return float(np.mean([getattr(s, key) for s in self.scores])) if self.scores else 0.0

    def summary(self) -> dict:
        """The ``--json`` schema of ``carn-stream eval``."""
        return {
            "psnr": self._mean("psnr"),
            "ssim": self._mean("ssim"),
            "bicubic_psnr": self._mean("bicubic_psnr"),
            "bicubic_ssim": self._mean("bicubic_ssim"),
            "images": len(self.scores),
            "scale": self.scale,
        }


def crop_to_multiple(image: np.ndarray, scale: int) -> np.ndarray:
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def degrade(hr: np.ndarray, scale: int) -> np.ndarray:
    """The benchmark LR image: bicubic downscale with antialiasing, 8-bit."""
    return bicubic_uint8(hr, scale=1.0 / scale)


def luma_scores(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) of two 8-bit RGB images on shaved BT.601 luma."""
    a = shave(rgb_to_y(sr), scale)
    b = shave(rgb_to_y(hr), scale)
    return psnr(a, b), ssim(a, b)


def score_image(name: str, hr: np.ndarray, upscale: Upscaler, scale: int) -> ImageScore:
    hr = crop_to_multiple(hr, scale)
    lr = degrade(hr, scale)
    sr = upscale(lr, scale)
    if sr.shape != hr.shape:
        raise ValueError(f"{name}: upscaler returned {sr.shape}, expected {hr.shape}")
    bicubic = bicubic_uint8(lr, scale=float(scale))
    p, s = luma_scores(sr, hr, scale)
    bp, bs = luma_scores(bicubic, hr, scale)
    return ImageScore(name, p, s, bp, bs)


def evaluate(
    images: Iterable[tuple[str, np.ndarray]],
    upscale: Upscaler,
    scale: int,
    on_image: Callable[[ImageScore], None] | None = None,
) -> EvaluationReport:
    """Score ``upscale`` on (name, HR 8-bit RGB) pairs; ``on_image`` reports progress."""
    report = EvaluationReport(scale)
    for name, hr in images:
        score = score_image(name, hr, upscale, scale)
        report.scores.append(score)
        if on_image:
            on_image(score)
    return report
