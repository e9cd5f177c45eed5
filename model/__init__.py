"""CARN / CARN-M networks, weights, complexity counts and the evaluation protocol.

The names below load on first use (PEP 562), so that torch-free modules of this package
(``scales``, ``recipe``) import without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "CARN": "networks",
    "carn": "networks",
    "carn_m": "networks",
    "carn_ng": "networks",
    "carn_nl": "networks",
    "resnet_baseline": "networks",
    "SUPPORTED_SCALES": "scales",
    "CARNMWeights": "weights",
    "Weights": "weights",
    "WeightsError": "weights",
    "load_weights": "weights",
}
__all__ = [
    "CARN",
    "SUPPORTED_SCALES",
    "CARNMWeights",
    "Weights",
    "WeightsError",
    "carn",
    "carn_m",
    "carn_ng",
    "carn_nl",
    "load_weights",
    "resnet_baseline",
]

if TYPE_CHECKING:
    from carn_stream.model.networks import CARN, carn, carn_m, carn_ng, carn_nl, resnet_baseline
    from carn_stream.model.scales import SUPPORTED_SCALES
    from carn_stream.model.weights import CARNMWeights, Weights, WeightsError, load_weights


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
