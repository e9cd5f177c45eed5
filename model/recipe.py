"""Training settings: the paper's recipe as a dataclass, and the fine-tuning defaults.

Torch-free, so that the command line can build its options without loading PyTorch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from carn_stream.model.scales import SUPPORTED_SCALES
from carn_stream.precisions import TRAIN_AMPS


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults are the paper's recipe (Sec. 4.1)."""

    steps: int = 600_000
    batch_size: int = 64
    patch_size: int = 64  #: LR patch side
    scales: tuple[int, ...] = SUPPORTED_SCALES  #: one scale per batch, drawn uniformly
    lr: float = 1e-4
    lr_decay_steps: int = 400_000  #: the learning rate is halved every this many steps
    lr_decay_factor: float = 0.5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    loss: str = "l1"  #: l1 or l2
    clip_grad_norm: float = 10.0  #: 0 = off (the authors' training code clips at 10)
    augment: bool = True  #: random horizontal flips and 90-degree rotations
    init: str = "uniform"  #: U(-k, k), k = 1/sqrt(fan_in); ignored when starting from weights
    seed: int = 0
    amp: str = "auto"  #: auto (bf16 on CUDA and on CPUs with bf16 in hardware), off, bf16, fp16
    workers: int = -1  #: data-loader processes; -1 = 4 on CUDA, 0 on CPU
    log_every: int = 100
    val_every: int = 5_000  #: 0 = only at the end
    checkpoint_every: int = 1_000
    val_max_side: int = 512  #: validation images are centre-cropped to this HR side

    def __post_init__(self) -> None:
        finite = math.isfinite
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "patch_size": self.patch_size >= 8,
            "scales": bool(self.scales) and set(self.scales) <= set(SUPPORTED_SCALES),
            # inf and nan trained to nan weights and ended as a success
            "lr": finite(self.lr) and self.lr > 0,
            "lr_decay_steps": self.lr_decay_steps >= 1,
            "lr_decay_factor": finite(self.lr_decay_factor) and 0 < self.lr_decay_factor <= 1,
            "adam_beta1": 0 <= self.adam_beta1 < 1,
            "adam_beta2": 0 <= self.adam_beta2 < 1,
            "adam_eps": finite(self.adam_eps) and self.adam_eps > 0,
            "loss": self.loss in ("l1", "l2"),
            "clip_grad_norm": finite(self.clip_grad_norm) and self.clip_grad_norm >= 0,
            "init": self.init == "uniform",
            "seed": self.seed >= 0,
            "amp": self.amp in TRAIN_AMPS,
            "workers": self.workers >= -1,
            "log_every": self.log_every >= 1,
            "val_every": self.val_every >= 0,
            "checkpoint_every": self.checkpoint_every >= 1,
            # 0 failed the run at its end, after every step, before the checkpoint was kept;
            # SSIM's 11 px window must fit once the border is shaved
            "val_max_side": self.val_max_side >= 32,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            raise ValueError(f"invalid training setting: {values}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The settings a JSON object names, each of its field's type (a config file's
        ``"steps": "5"`` or ``"augment": "no"`` ended in a traceback, or was taken as true)."""
        if not isinstance(data, dict):
            raise ValueError(f"training settings must be a JSON object, not {type(data).__name__}")
        kinds = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(kinds))
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        values = {name: _typed(name, kinds[name], value) for name, value in data.items()}
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable JSON config ({exc})") from exc

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _typed(name: str, kind: str, value: Any) -> Any:
    """``value`` as the field's ``kind`` (its annotation), or a ValueError naming it."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int" and whole:
        return value
    if kind == "float" and (whole or isinstance(value, float)):
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str):
        return value
    if kind.startswith("tuple[int") and isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    wanted = {"int": "a whole number", "float": "a number", "bool": "true or false",
              "str": "text"}.get(kind, "a list of whole numbers")  # fmt: skip
    raise ValueError(f"training setting {name} must be {wanted}, not {value!r}")


#: Fine-tuning one video's model from existing weights (``carn-stream tune``).
TUNE_DEFAULTS = {
    "steps": 200,
    "batch_size": 16,
    "patch_size": 48,
    "lr": 5e-5,
    "lr_decay_steps": 1_000_000,
    "log_every": 10,
    "val_every": 0,
    "checkpoint_every": 100,
}

#: The CRF at which a title's low-resolution copy is stored by default.
TITLE_STORE_CRF = 30

#: Fine-tuning a title's compression-aware model on its encoded copy (``carn-stream assess``,
#: ``carn-stream tune --degradation encoded``); sized for a 10 s 720p title on two CPU cores.
TITLE_DEFAULTS = {
    **TUNE_DEFAULTS,
    "steps": 150,
    "lr": 2e-4,
    "checkpoint_every": 25,
}
