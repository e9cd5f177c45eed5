"""CARN at one scale rearranged for inference engines: the same function, fewer memory passes.

Two rewrites, both exact up to float rounding (tests/test_deployed.py):

- **The exit conv before the last pixel shuffle.** A 3x3 conv applied after a shuffle by ``r``
  equals a 3x3 conv at the lower resolution from ``r*r*C`` channels to ``r*r*3`` channels
  followed by the shuffle: output phase ``(a, b)`` reads the pre-shuffle channels of phase
  ``((a+dy) mod r, (b+dx) mod r)`` at offset ``((a+dy) div r, (b+dx) div r)``. The
  full-resolution feature map (64 channels at the output size) is then never shuffled; only
  the 3-channel image is.
- **Cascades without concatenation.** ``conv1x1(cat(p0, ..., pk))`` is
  ``sum_i conv1x1_i(p_i)``; engines fuse each sum into the convolution that produces it,
  where a concatenation is a copy of every part at every step.

Measured with OpenVINO on the CPU (docs/PERFORMANCE.md), 320x180 x4: bf16 from 160 to 128 ms a
frame, int8 from 290 to 146 ms.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from carn_stream.model.networks import CARN, Cascade


def exit_before_shuffle(exit_conv: nn.Conv2d, r: int) -> nn.Conv2d:
    """The 3x3 ``exit_conv`` (C -> O channels) that follows a pixel shuffle by ``r``, as a 3x3
    conv on the unshuffled tensor (r*r*C -> r*r*O channels) whose output shuffles to the same
    image."""
    plain = (
        exit_conv.kernel_size == (3, 3)
        and exit_conv.padding == (1, 1)
        and exit_conv.stride == (1, 1)
        and exit_conv.dilation == (1, 1)
        and exit_conv.groups == 1
        and exit_conv.padding_mode == "zeros"
    )
    if not plain:
        raise ValueError("only a plain 3x3 conv (zero padding 1, stride 1) moves before a shuffle")
    weight = exit_conv.weight.detach()
    outs, ins = weight.shape[:2]
    phases = r * r
    like = {"device": weight.device, "dtype": weight.dtype}
    moved = skip_init(nn.Conv2d, ins * phases, outs * phases, 3, padding=1, **like)
    folded = torch.zeros(moved.weight.shape, **like)
    for a in range(r):
        for b in range(r):
            for dy in (-1, 0, 1):
                row, a_in = divmod(a + dy, r)
                for dx in (-1, 0, 1):
                    col, b_in = divmod(b + dx, r)
                    # pixel_shuffle: channel c*r*r + a*r + b lands at (r*i + a, r*j + b)
                    folded[a * r + b :: phases, a_in * r + b_in :: phases, row + 1, col + 1] += (
                        weight[:, :, dy + 1, dx + 1]
                    )
    with torch.no_grad():
        moved.weight.copy_(folded)
        bias = exit_conv.bias if exit_conv.bias is not None else torch.zeros(outs, **like)
        moved.bias.copy_(bias.detach().repeat_interleave(phases))
    return moved


class SplitFusion(nn.Module):
    """``relu(conv1x1(cat(parts)))`` as ``relu(sum of one 1x1 conv per part)``."""

    def __init__(self, fusion: nn.Conv2d, part_channels: int) -> None:
        super().__init__()
        parts = fusion.in_channels // part_channels
        self.parts = nn.ModuleList()
        for i in range(parts):
            like = {"device": fusion.weight.device, "dtype": fusion.weight.dtype}
            conv = skip_init(nn.Conv2d, part_channels, fusion.out_channels, 1, bias=i == 0, **like)
            with torch.no_grad():
                conv.weight.copy_(fusion.weight[:, i * part_channels : (i + 1) * part_channels])
                if i == 0:
                    conv.bias.copy_(fusion.bias)
            self.parts.append(conv)

    def forward(self, parts: list[Tensor]) -> Tensor:
        out = self.parts[0](parts[0])
        for conv, part in zip(self.parts[1:], parts[1:], strict=True):
            out = out + conv(part)
        return torch.relu(out)


class SplitCascade(nn.Module):
    """A :class:`~carn_stream.model.networks.Cascade` whose fusions read the parts directly."""

    def __init__(self, cascade: Cascade, channels: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(_split(stage, channels) for stage in cascade.stages)
        self._order = list(cascade._order)
        self.fusions = (
            None
            if cascade.fusions is None
            else nn.ModuleList(SplitFusion(f[0], channels) for f in cascade.fusions)
        )

    def forward(self, x: Tensor) -> Tensor:
        parts, out = [x], x
        for step, index in enumerate(self._order):
            y = self.stages[index](out)
            if self.fusions is None:
                out = y
            else:
                parts.append(y)
                out = self.fusions[step](parts)
        return out


def _split(module: nn.Module, channels: int) -> nn.Module:
    return SplitCascade(module, channels) if isinstance(module, Cascade) else module


class DeployedCARN(nn.Module):
    """``model`` at ``scale`` in the rearranged form (see the module docstring); takes and
    returns what ``model(x, scale)`` does."""

    def __init__(
        self,
        model: CARN,
        scale: int,
        *,
        split_cascades: bool = True,
        body_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if scale not in model.scales:
            raise ValueError(f"scale {scale} not supported by this network ({model.scales})")
        upsampler = list(model.upsamplers[f"x{scale}"])
        shuffle = upsampler[-1]
        if not isinstance(shuffle, nn.PixelShuffle):
            raise ValueError("the upsampler must end with a pixel shuffle")
        channels = model.entry.out_channels
        self.register_buffer("rgb_mean", model.rgb_mean.detach().clone())
        self.entry = model.entry
        self.body = _split(model.body, channels) if split_cascades else model.body
        self.upsampler = nn.Sequential(*upsampler[:-1])
        self.exit = exit_before_shuffle(model.exit, shuffle.upscale_factor)
        self.shuffle = nn.PixelShuffle(shuffle.upscale_factor)
        self.body_dtype = body_dtype
        if body_dtype is not None:
            self.body.to(body_dtype)
            self.upsampler.to(body_dtype)

    def forward(self, x: Tensor) -> Tensor:
        out = self.entry(x - self.rgb_mean)
        if self.body_dtype is not None:
            out = out.to(self.body_dtype)
        out = self.upsampler(self.body(out))
        if self.body_dtype is not None:
            out = out.to(x.dtype)
        return self.shuffle(self.exit(out)) + self.rgb_mean


def deployed(
    model: CARN,
    scale: int,
    *,
    split_cascades: bool = True,
    body_dtype: torch.dtype | None = None,
) -> DeployedCARN:
    """``model`` at ``scale`` rearranged for an inference engine, in eval mode, on ``model``'s
    device and in its dtype; a copy: ``model`` itself is left as it was.

    ``split_cascades=False`` keeps the cascades' concatenations (eager PyTorch in bf16 rounds
    each of the sums that replace them; one conv over a concatenation sums in fp32). With
    ``body_dtype`` the
    body and upsampler hold and compute in that dtype while the mean shift and the
    image-facing entry and exit convs stay in ``model``'s (as
    :class:`~carn_stream.model.mixed.MixedPrecisionCARN`)."""
    form = DeployedCARN(
        copy.deepcopy(model), scale, split_cascades=split_cascades, body_dtype=body_dtype
    )
    return form.eval()
