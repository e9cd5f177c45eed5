"""Whole-image super-resolution of 8-bit RGB arrays (evaluation and single images)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is taken as asked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but no CUDA device is available")
    return device


@torch.inference_mode()
def upscale_rgb(model: nn.Module, image: np.ndarray, scale: int) -> np.ndarray:
    """Upscale an HxWx3 uint8 RGB image; returns (scale*H)x(scale*W)x3 uint8."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    x = x.permute(2, 0, 1).unsqueeze(0).float().div_(255)
    y = model(x, scale).clamp_(0, 1).mul_(255).round_()
    return y.squeeze(0).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
