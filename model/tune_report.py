"""What a fine-tune on one video reports: held-out PSNR of the starting (generic) weights, the
tuned ones and bicubic, per scale and on average. ``carn-stream tune`` writes it beside the
weights (``NAME.json``); the service reads it back when a video's fine-tune is done."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ScaleFigures:
    generic_psnr: float
    tuned_psnr: float
    bicubic_psnr: float


@dataclass(frozen=True)
class TuneReport:
    video: str
    scales: tuple[int, ...]
    train_frames: int
    heldout_frames: int
    steps: int
    per_scale: dict[int, ScaleFigures]
    weights: str
    weights_bytes: int
    config: dict[str, Any] = field(default_factory=dict)

    def _mean(self, key: str) -> float:
        values = [getattr(f, key) for f in self.per_scale.values()]
        return round(sum(values) / len(values), 3)

    @property
    def generic_psnr(self) -> float:
        """Over the scales (each one's figure in :attr:`per_scale`)."""
        return self._mean("generic_psnr")

    @property
    def tuned_psnr(self) -> float:
        return self._mean("tuned_psnr")

    @property
    def bicubic_psnr(self) -> float:
        return self._mean("bicubic_psnr")

    @property
    def gain_db(self) -> float:
        return round(self.tuned_psnr - self.generic_psnr, 3)

    def to_dict(self, with_config: bool = True) -> dict[str, Any]:
        data = asdict(self)
        data["scales"] = list(self.scales)
        data["per_scale"] = {str(s): asdict(f) for s, f in self.per_scale.items()}
        for key in ("generic_psnr", "tuned_psnr", "bicubic_psnr", "gain_db"):
            data[key] = getattr(self, key)
        if not with_config:
            data.pop("config")
        return data

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> TuneReport:
        """A report written by :meth:`write`; ValueError when it is not one."""
        try:
            data = json.loads(path.read_text())
            return cls(
                video=str(data["video"]),
                scales=tuple(int(s) for s in data["scales"]),
                train_frames=int(data["train_frames"]),
                heldout_frames=int(data["heldout_frames"]),
                steps=int(data["steps"]),
                per_scale={
                    int(s): ScaleFigures(**{k: float(v) for k, v in figures.items()})
                    for s, figures in data["per_scale"].items()
                },
                weights=str(data["weights"]),
                weights_bytes=int(data["weights_bytes"]),
                config=dict(data.get("config", {})),
            )
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path.name} is not a fine-tune report: {exc}") from exc
