"""CARN with its body in a 16-bit dtype and its image-facing parts in fp32 (mixed precision)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from carn_stream.model.networks import CARN


class MixedPrecisionCARN(nn.Module):
    """A copy of ``model`` whose body and upsamplers hold ``dtype`` weights while the entry and
    exit convs and the mean shift stay fp32: 8-bit pixels are not exactly representable in bf16
    (8 significant bits), and its rounding at the input and output alone costs more than every
    layer in between. The forward pass is CARN's own (``CARN.forward(..., body_dtype=)``).
    """

    def __init__(self, model: CARN, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.net = copy.deepcopy(model).float()
        self.net.body.to(dtype)
        self.net.upsamplers.to(dtype)
        self.scales = model.scales

    @property
    def entry(self) -> nn.Module:
        return self.net.entry

    @property
    def exit(self) -> nn.Module:
        return self.net.exit

    @property
    def body(self) -> nn.Module:
        return self.net.body

    def forward(self, x: Tensor, scale: int | None = None) -> Tensor:
        return self.net(x.float(), scale, body_dtype=self.dtype)
