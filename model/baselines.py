"""Non-learned upscalers with the networks' calling convention, for baselines and tests."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from carn_stream.model.imresize import imresize
from carn_stream.model.networks import SUPPORTED_SCALES


class Bicubic(nn.Module):
    """MATLAB-style bicubic upscaling: ``forward(x, scale)`` like :class:`~.networks.CARN`."""

    def __init__(self, scales: Sequence[int] = SUPPORTED_SCALES) -> None:
        super().__init__()
        self.scales = tuple(scales)

    def forward(self, x: Tensor, scale: int | None = None) -> Tensor:
        scale = scale or self.scales[0]
        return imresize(x, scale=float(scale)).to(x.dtype)
