"""CARN and CARN-M (Ahn et al., ECCV 2018) with the switches for the paper's ablations.

The networks take RGB in [0, 1] shaped ``(N, 3, H, W)`` and return ``(N, 3, s*H, s*W)``.
A multi-scale network holds one upsampler branch per scale and picks it per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import torch
from torch import Tensor, nn

from carn_stream.model.scales import SUPPORTED_SCALES

#: Mean RGB of the DIV2K training set, subtracted at the input and added back at the output.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def fuse_1x1(in_channels: int, out_channels: int) -> nn.Sequential:
    """The 1x1 convolution + ReLU that merges a cascade of concatenated features."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Plain residual block: conv3x3 -> ReLU -> conv3x3, identity skip, ReLU after the sum."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + x)


class EfficientResidualBlock(nn.Module):
    """CARN-M's residual-E block: two 3x3 group convs and a 1x1 conv, identity skip."""

    def __init__(self, channels: int, group: int) -> None:
        super().__init__()
        if channels % group:
            raise ValueError(f"group size {group} does not divide {channels} channels")
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=group),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, groups=group),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + x)


class Cascade(nn.Module):
    """Run ``stages`` one after another, optionally cascading their outputs.

    With cascading, stage ``i``'s output is concatenated with everything before it and fused
    by a 1x1 conv into the next stage's input (the paper's local/global cascading). Without
    it, the stages form a plain chain and hold no 1x1 convs.
    """

    def __init__(self, stages: Sequence[nn.Module], channels: int, cascade: bool) -> None:
        super().__init__()
        # A recursive block passes the same module several times; keep each one once.
        unique = list(dict.fromkeys(stages))
        self.stages = nn.ModuleList(unique)
        self._order = [unique.index(stage) for stage in stages]
        self.cascade = cascade
        self.fusions = (
            nn.ModuleList(fuse_1x1(channels * (i + 2), channels) for i in range(len(stages)))
            if cascade
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        features = x
        out = x
        for step, index in enumerate(self._order):
            y = self.stages[index](out)
            if self.fusions is None:
                out = y
            else:
                features = torch.cat([features, y], dim=1)
                out = self.fusions[step](features)
        return out


def cascading_block(
    channels: int,
    units: int,
    *,
    efficient: bool,
    group: int,
    recursive: bool,
    local_cascade: bool,
) -> Cascade:
    """One cascading block: ``units`` residual blocks (shared when ``recursive``)."""

    def make() -> nn.Module:
        if efficient:
            return EfficientResidualBlock(channels, group)
        return ResidualBlock(channels)

    if recursive:
        shared = make()
        stages = [shared] * units
    else:
        stages = [make() for _ in range(units)]
    return Cascade(stages, channels, local_cascade)


def upsample_branch(channels: int, scale: int, group: int) -> nn.Sequential:
    """Sub-pixel upsampler: (group) conv to ``r*r*C`` channels, ReLU, pixel shuffle by ``r``."""
    factors = {2: [2], 3: [3], 4: [2, 2]}.get(scale)
    if factors is None:
        raise ValueError(f"unsupported scale {scale}; choose one of {SUPPORTED_SCALES}")
    layers: list[nn.Module] = []
    for r in factors:
        layers += [
            nn.Conv2d(channels, channels * r * r, 3, padding=1, groups=group),
            nn.ReLU(inplace=True),
            nn.PixelShuffle(r),
        ]
    return nn.Sequential(*layers)


class CARN(nn.Module):
    """Cascading Residual Network.

    Args:
        scales: scales this network can produce; more than one makes it multi-scale.
        channels: feature width.
        blocks: number of cascading blocks.
        units: residual blocks per cascading block.
        efficient: use residual-E blocks (CARN-M) instead of plain residual blocks.
        group: group size of the residual-E blocks' 3x3 convs.
        recursive: share one residual block inside each cascading block (CARN-M).
        local_cascade: cascade inside each block (off: CARN-NL).
        global_cascade: cascade between blocks (off: CARN-NG; both off: the ResNet baseline).
        upsample_group: group size of the upsampler convs (CARN: 1, CARN-M: ``group``).
    """

    def __init__(
        self,
        scales: Sequence[int] = SUPPORTED_SCALES,
        *,
        channels: int = 64,
        blocks: int = 3,
        units: int = 3,
        efficient: bool = False,
        group: int = 1,
        recursive: bool = False,
        local_cascade: bool = True,
        global_cascade: bool = True,
        upsample_group: int = 1,
        rgb_mean: Sequence[float] = DIV2K_RGB_MEAN,
    ) -> None:
        super().__init__()
        self.scales = tuple(sorted(set(scales)))
        if not self.scales or any(s not in SUPPORTED_SCALES for s in self.scales):
            raise ValueError(f"scales must be a subset of {SUPPORTED_SCALES}, got {scales}")
        self.register_buffer("rgb_mean", torch.tensor(rgb_mean).view(1, 3, 1, 1))
        self.entry = nn.Conv2d(3, channels, 3, padding=1)
        body = [
            cascading_block(
                channels,
                units,
                efficient=efficient,
                group=group,
                recursive=recursive,
                local_cascade=local_cascade,
            )
            for _ in range(blocks)
        ]
        self.body = Cascade(body, channels, global_cascade)
        self.upsamplers = nn.ModuleDict(
            {f"x{s}": upsample_branch(channels, s, upsample_group) for s in self.scales}
        )
        self.exit = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(
        self, x: Tensor, scale: int | None = None, body_dtype: torch.dtype | None = None
    ) -> Tensor:
        """``x`` (N, 3, H, W) in [0, 1] -> (N, 3, s*H, s*W).

        With ``body_dtype`` the body and upsampler run in that dtype (their weights must be in
        it, see :mod:`carn_stream.model.mixed`) while the mean shift and the image-facing entry
        and exit convs run in ``x``'s dtype.
        """
        if scale is None:
            if len(self.scales) > 1:
                raise ValueError(f"multi-scale network: pass scale, one of {self.scales}")
            scale = self.scales[0]
        if scale not in self.scales:
            raise ValueError(f"scale {scale} not supported by this network ({self.scales})")
        mean = self.rgb_mean.to(x.dtype)
        out = self.entry(x - mean)
        if body_dtype is not None:
            out = out.to(body_dtype)
        out = self.body(out)
        out = self.upsamplers[f"x{scale}"](out)
        return self.exit(out.to(x.dtype)) + mean


def carn(
    weights: object = None,
    *,
    scales: Sequence[int] = SUPPORTED_SCALES,
    cache_dir: Path | None = None,
    **kwargs,
) -> CARN:
    """CARN: plain residual blocks, local and global cascading, 1.59M parameters."""
    model = CARN(scales, **kwargs)
    return _with_weights(model, weights, cache_dir)


def carn_m(
    weights: object = None,
    *,
    scales: Sequence[int] = SUPPORTED_SCALES,
    group: int = 4,
    recursive: bool = True,
    cache_dir: Path | None = None,
    **kwargs,
) -> CARN:
    """CARN-M: residual-E blocks with group convs, recursive blocks, group-conv upsampler.

    ``weights`` takes a :class:`carn_stream.model.weights.CARNMWeights` entry (found in, or
    downloaded into, ``cache_dir``) or a path.
    """
    if weights is not None:
        entry = weights.value if isinstance(weights, Enum) else weights  # a registry member
        scales = tuple((getattr(entry, "meta", None) or {}).get("scales", scales))
    kwargs.setdefault("upsample_group", group)
    model = CARN(scales, efficient=True, group=group, recursive=recursive, **kwargs)
    return _with_weights(model, weights, cache_dir)


def carn_nl(**kwargs) -> CARN:
    """Ablation CARN-NL: CARN without local cascading."""
    return CARN(local_cascade=False, **kwargs)


def carn_ng(**kwargs) -> CARN:
    """Ablation CARN-NG: CARN without global cascading."""
    return CARN(global_cascade=False, **kwargs)


def resnet_baseline(**kwargs) -> CARN:
    """Ablation baseline: the same residual blocks in a plain chain, no cascading at all."""
    return CARN(local_cascade=False, global_cascade=False, **kwargs)


def _with_weights(model: CARN, weights: object, cache_dir: Path | None) -> CARN:
    if weights is None:
        return model
    from carn_stream.model.weights import load_weights  # local import: weights imports this module

    load_weights(model, weights, **({} if cache_dir is None else {"cache_dir": cache_dir}))
    return model
