"""The one settings object, read from ``CARN_STREAM_*`` environment variables at the edge.

Command-line flags override it; everything below the edge receives values, never reads the
environment itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

PREFIX = "CARN_STREAM_"


def _default_cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "carn-stream"


def _flag(value: str) -> bool:
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


@dataclass(frozen=True)
class Settings:
    """Service and CLI configuration. Each field maps to ``CARN_STREAM_<FIELD>``."""

    #: Weights file to use instead of the registry (also read from ``CARN_WEIGHTS``).
    weights: Path | None = None
    #: Where downloaded weights are cached.
    cache_dir: Path = Path.home() / ".cache" / "carn-stream"
    #: Mirror for the official weights (the registry's checksum still applies).
    weights_url: str | None = None
    #: Allow downloading weights when they are not cached.
    allow_download: bool = True
    #: Inference device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
    device: str = "auto"
    #: Inference precision: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``.
    precision: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {"cache_dir": _default_cache_dir(env)}
        weights = env.get(f"{PREFIX}WEIGHTS") or env.get("CARN_WEIGHTS")
        if weights:
            values["weights"] = Path(weights)
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or f.name == "weights":
                continue
            try:
                values[f.name] = _parse(f.name, raw)
            except ValueError as exc:
                raise ValueError(f"{PREFIX}{f.name.upper()}: {exc}") from exc
        return cls(**values)

    def with_overrides(self, **overrides: object) -> Settings:
        """A copy with the given fields replaced; ``None`` leaves a field as it is."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _parse(name: str, raw: str) -> object:
    if name == "cache_dir":
        return Path(raw)
    if name == "allow_download":
        return _flag(raw)
    return raw
