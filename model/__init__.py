"""CARN / CARN-M networks, weights, complexity counts and the evaluation protocol."""

from carn_stream.model.carn import (
    CARN,
    SUPPORTED_SCALES,
    carn,
    carn_m,
    carn_ng,
    carn_nl,
    resnet_baseline,
)
from carn_stream.model.weights import CARNMWeights, Weights, WeightsError, load_weights

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
