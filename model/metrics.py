"""Image-quality metrics of the SR benchmarks: PSNR and SSIM on the BT.601 luma channel."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Luma of an 8-bit RGB image as MATLAB's ``rgb2ycbcr`` computes it (studio range, rounded)."""
    x = rgb.astype(np.float64)
    y = 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0
    return np.round(y)


def shave(image: np.ndarray, border: int) -> np.ndarray:
    return image[border:-border, border:-border] if border > 0 else image


#: What an exact match counts as in a mean of PSNRs (its own PSNR is infinite, which made the
#: mean infinite: a report no JSON or curve fit could take).
MAX_PSNR_DB = 100.0


def mean_psnr(values: list[float]) -> float:
    """The mean of frames' PSNRs, an exact frame counted as :data:`MAX_PSNR_DB`."""
    return float(np.mean([min(v, MAX_PSNR_DB) for v in values]))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma * sigma))
    return g / g.sum()


def _gaussian_filter(maps: torch.Tensor) -> torch.Tensor:
    """Valid 11x11 Gaussian filtering of (N, 1, H, W), done as two 1-D passes."""
    g = _gaussian_taps()
    return F.conv2d(F.conv2d(maps, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, valid region only."""
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    x = torch.from_numpy(a.astype(np.float64))
    y = torch.from_numpy(b.astype(np.float64))
    stats = _gaussian_filter(torch.stack([x, y, x * x, y * y, x * y])[:, None])
    mu_x, mu_y, exx, eyy, exy = stats[:, 0]
    sxx, syy, sxy = exx - mu_x**2, eyy - mu_y**2, exy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return float((num / den).mean())
