"""Parameter and Mult-Add counts in the paper's convention.

Mult-Adds count convolutions only (``k*k*C_in/groups`` multiply-adds per output value, no
biases, activations, pixel shuffles or mean shift) for an output of ``hr_size``. The LR input
is ``hr_size / scale`` per side and may be fractional (1280/3), as in the paper's Table 1.
Counts are measured on the module tree by hooks during a forward pass on the meta device, so
they follow the code, not a formula.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

PAPER_HR_SIZE = (720, 1280)  # (height, width)


@dataclass(frozen=True)
class ParameterCount:
    total: int  #: every learnable value (conv weights and biases)
    weights_only: int  #: conv weights without biases

    @classmethod
    def of(cls, model: nn.Module) -> ParameterCount:
        total = sum(p.numel() for p in model.parameters())
        biases = sum(p.numel() for name, p in model.named_parameters() if name.endswith("bias"))
        return cls(total=total, weights_only=total - biases)


def mult_adds(model: nn.Module, scale: int, hr_size: tuple[int, int] = PAPER_HR_SIZE) -> float:
    """Multiply-adds of one forward pass producing an ``hr_size`` output at ``scale``."""
    probe = 12  # LR side of the probe; divisible by every scale step
    per_lr_pixel = 0.0

    def count(conv: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal per_lr_pixel
        kh, kw = conv.kernel_size
        per_output = kh * kw * conv.in_channels // conv.groups
        out_pixels = output.shape[-2] * output.shape[-1]
        per_lr_pixel += per_output * conv.out_channels * out_pixels / (probe * probe)

    shadow = copy.deepcopy(model).to("meta")  # shapes only: no memory, no compute
    for module in shadow.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(count)
    with torch.no_grad():
        shadow(torch.empty(1, 3, probe, probe, device="meta"), scale)
    lr_pixels = hr_size[0] * hr_size[1] / (scale * scale)
    return per_lr_pixel * lr_pixels


#: Table 1 of the paper: parameters and Mult-Adds (x2, x3, x4) for a 720p output.
PAPER_TABLE_1 = {
    "CARN": {"params": 1_592_000, "mult_adds": {2: 222.8e9, 3: 118.8e9, 4: 90.9e9}},
    "CARN-M": {"params": 412_000, "mult_adds": {2: 91.2e9, 3: 46.1e9, 4: 32.5e9}},
}


def describe_published_models() -> list[dict]:
    """Counts of the multi-scale CARN and CARN-M next to the paper's Table 1."""
    from carn_stream.model.networks import carn, carn_m

    rows = []
    for name, build in (("CARN", carn), ("CARN-M", carn_m)):
        net = build()
        params = ParameterCount.of(net)
        rows.append(
            {
                "model": name,
                "params": params.total,
                "params_weights_only": params.weights_only,
                "mult_adds": {str(s): mult_adds(net, s) for s in net.scales},
                "paper": {
                    "params": PAPER_TABLE_1[name]["params"],
                    "mult_adds": {str(s): v for s, v in PAPER_TABLE_1[name]["mult_adds"].items()},
                },
            }
        )
    return rows
