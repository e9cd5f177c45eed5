"""VMAF (Netflix's ``vmaf_v0.6.1`` model) through vmaf-torch, on any torch device, and the luma
plane it is measured on.

VMAF reads the luma of the video as it would be encoded: :func:`luma` turns 8-bit RGB frames
into limited-range Y with a matrix (BT.709 by default; the per-title report uses it whatever
the title's size: its scores compare variants of one title, measured alike). Scores are per
frame, clipped to [0, 100] as libvmaf clips them. The motion feature compares each reference
frame with its neighbours, so frames must be consecutive; it is computed over the whole
sequence, the rest in chunks of ``chunk`` frames to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: Luma weights (Kr, Kg, Kb) per matrix name.
LUMA_WEIGHTS = {"bt709": (0.2126, 0.7152, 0.0722), "bt601": (0.299, 0.587, 0.114)}


def luma(rgb: np.ndarray, matrix: str = "bt709") -> np.ndarray:
    """Limited-range 8-bit Y (16-235) of an HxWx3 (or NxHxWx3) uint8 RGB image."""
    kr, kg, kb = LUMA_WEIGHTS[matrix]
    x = rgb.astype(np.float32)
    y = 16.0 + 219.0 / 255.0 * (kr * x[..., 0] + kg * x[..., 1] + kb * x[..., 2])
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


class Vmaf:
    """Per-frame VMAF of distorted luma frames against reference ones."""

    def __init__(self, device: str | torch.device = "cpu", chunk: int = 8) -> None:
        from vmaf_torch import VMAF

        self.device = torch.device(device)
        self.chunk = chunk
        self.model = VMAF(temporal_pooling=False, enable_motion=True, clip_score=True)
        self.model = self.model.to(self.device).eval()

    def _stack(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        arr = np.stack([np.asarray(f) for f in frames])
        return torch.from_numpy(arr).to(self.device, torch.float32).unsqueeze(1)

    @torch.inference_mode()
    def scores(
        self, reference: Sequence[np.ndarray], distorted: Sequence[np.ndarray]
    ) -> np.ndarray:
        """VMAF per frame of consecutive (H, W) uint8 luma frames."""
        if len(reference) != len(distorted) or not reference:
            raise ValueError(f"{len(reference)} reference and {len(distorted)} distorted frames")
        if reference[0].shape != distorted[0].shape:
            raise ValueError(f"sizes differ: {reference[0].shape} and {distorted[0].shape}")
        ref = self._stack(reference)
        motion = self.model.compute_motion2(ref)
        out = []
        for i in range(0, len(reference), self.chunk):
            r = ref[i : i + self.chunk]
            d = self._stack(distorted[i : i + self.chunk])
            adm = self.model.compute_adm_score(r, d)
            vif = self.model.compute_vif_features(r, d)
            out.append(self.model.predict(adm, motion[i : i + self.chunk], vif))
        return torch.cat(out).flatten().double().cpu().numpy()
