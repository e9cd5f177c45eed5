"""Training pairs: HR images, their benchmark-bicubic LR versions, and random patch batches.

LR images are made once per scale with the evaluation's bicubic (MATLAB-style, antialiased,
8-bit), so a patch pair is an aligned crop of both. Batch ``k`` is a pure function of
``(seed, k)``: any number of loader workers, and a resumed run, see the same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from carn_stream.model.evaluation import crop_to_multiple, degrade


@dataclass(frozen=True)
class Pair:
    hr: np.ndarray  #: (s*h, s*w, 3) uint8
    lr: np.ndarray  #: (h, w, 3) uint8


def make_pairs(
    images: Sequence[np.ndarray],
    scales: Sequence[int],
    patch_size: int,
    on_image: Callable[[int], None] | None = None,
) -> dict[int, list[Pair]]:
    """LR/HR pairs per scale; images too small for one ``patch_size`` LR patch are skipped."""
    pairs: dict[int, list[Pair]] = {s: [] for s in scales}
    for i, image in enumerate(images):
        for s in scales:
            hr = crop_to_multiple(image, s)
            if min(hr.shape[:2]) < patch_size * s:
                continue
            pairs[s].append(Pair(np.ascontiguousarray(hr), degrade(hr, s)))
        if on_image:
            on_image(i)
    empty = [s for s, p in pairs.items() if not p]
    if empty:
        raise ValueError(
            f"no training image is large enough for {patch_size}px LR patches at "
            f"x{', x'.join(map(str, empty))} (needs {patch_size * max(empty)}px HR sides)"
        )
    return pairs


def given_pairs(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], scale: int, patch_size: int
) -> dict[int, list[Pair]]:
    """Pairs made elsewhere (an encoder's low-resolution frames and the originals), as
    :func:`make_pairs` returns them; each HR is ``scale`` times its LR."""
    out = []
    for lr, hr in pairs:
        if hr.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
            raise ValueError(f"HR {hr.shape[:2]} is not x{scale} of LR {lr.shape[:2]}")
        if min(lr.shape[:2]) >= patch_size:
            out.append(Pair(np.ascontiguousarray(hr), np.ascontiguousarray(lr)))
    if not out:
        raise ValueError(f"no training pair is large enough for {patch_size}px LR patches")
    return {scale: out}


def augment(lr: np.ndarray, hr: np.ndarray, flip: bool, turns: int) -> tuple[np.ndarray, ...]:
    """The paper's augmentation: horizontal flip, then ``turns`` 90-degree rotations."""
    if flip:
        lr, hr = lr[:, ::-1], hr[:, ::-1]
    if turns:
        lr, hr = np.rot90(lr, turns), np.rot90(hr, turns)
    return lr, hr


class PatchBatches(Dataset):
    """Item ``k`` is training step ``k``'s batch: ``(scale, lr, hr)`` as uint8 NCHW tensors.

    One scale per batch, drawn uniformly from the pairs' scales (multi-scale training).
    """

    def __init__(
        self,
        pairs: dict[int, list[Pair]],
        batch_size: int,
        patch_size: int,
        seed: int,
        augment: bool = True,
        steps: int = 1 << 62,
    ) -> None:
        self.pairs, self.batch_size, self.patch_size = pairs, batch_size, patch_size
        self.seed, self.augment, self.steps = seed, augment, steps
        self.scales = sorted(pairs)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        scale = self.scales[rng.integers(len(self.scales))]
        pairs, p = self.pairs[scale], self.patch_size
        lrs, hrs = [], []
        for _ in range(self.batch_size):
            pair = pairs[rng.integers(len(pairs))]
            h, w = pair.lr.shape[:2]
            y, x = rng.integers(h - p + 1), rng.integers(w - p + 1)
            lr = pair.lr[y : y + p, x : x + p]
            hr = pair.hr[y * scale : (y + p) * scale, x * scale : (x + p) * scale]
            flip, turns = bool(rng.integers(2)), int(rng.integers(4))
            if self.augment:
                lr, hr = augment(lr, hr, flip, turns)
            lrs.append(lr)
            hrs.append(hr)
        return scale, _nchw(lrs), _nchw(hrs)


def _nchw(patches: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(patches))).permute(0, 3, 1, 2)
