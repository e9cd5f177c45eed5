"""Weights registry, resolution (path -> cache -> download) and strict loading.

Weights are data: each registry entry carries where the file lives, its checksum, what input
the network expects and what it measured. Numbers in the docs are generated from ``meta``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ProgressCallback = Callable[[int, int | None], None]
log = logging.getLogger(__name__)

#: Input contract shared by every CARN checkpoint here.

#: Table 1 of the paper (PSNR/SSIM), CARN-M.
PAPER_CARN_M = {
    "Set5": {2: (37.53, 0.9583), 3: (33.99, 0.9236), 4: (31.92, 0.8903)},
    "Set14": {2: (33.26, 0.9141), 3: (30.08, 0.8367), 4: (28.42, 0.7762)},
    "B100": {2: (31.92, 0.8960), 3: (28.91, 0.8000), 4: (27.44, 0.7304)},
    "Urban100": {2: (31.23, 0.9193), 3: (27.55, 0.8385), 4: (25.62, 0.7694)},
}


#: The bundled weights: file checksum, and the numbers ``carn-stream eval`` measured on them.
BUNDLED_SHA256 = "9c5da6409dbe98ec2da618cb07b927d5d4983c5c0be58353be2558978f70c4fd"
BUNDLED_META: Mapping[str, Any] = {
    "name": "carn_m carn-stream SunHays80",
    "architecture": "carn_m",
    "group": 4,
    "scales": (2, 3, 4),
    "license": "MIT",
    "recipe": "docs/TRAINING.md",
    "training": "SunHays80 (76 photos), 4,500 steps of 16 x 32px LR patches, x2/x3/x4, 2 CPU cores",
    # Measured by `carn-stream eval` (protocol in docs/MODEL.md); PSNR dB / SSIM on Y.
    "metrics": {
        "Set5": {2: (34.88, 0.9414), 3: (31.34, 0.8833), 4: (29.19, 0.8268)},
        "Set14": {2: (31.31, 0.8934), 3: (28.34, 0.8016), 4: (26.58, 0.7275)},
    },
    "bicubic": {
        "Set5": {2: (33.65, 0.9295), 3: (30.39, 0.8679), 4: (28.42, 0.8102)},
        "Set14": {2: (30.32, 0.8692), 3: (27.63, 0.7752), 4: (26.09, 0.7042)},
    },
}


class WeightsError(RuntimeError):
    """A weights file is missing, corrupt, or does not fit the network."""


@dataclass(frozen=True)
class Weights:
    """One published weights file."""

    url: str
    sha256: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    bundled: str | None = None  #: file name inside the package's ``model/bundled`` folder

    @property
    def filename(self) -> str:
        stem = Path(self.url or self.bundled or "weights").stem
        return f"{stem}-{self.sha256[:8]}.pth"

    @property
    def bundled_path(self) -> Path | None:
        return BUNDLED_DIR / self.bundled if self.bundled else None

    def quality(self) -> str:
        """Measured Set5/Set14 PSNR per scale, as one line for messages."""
        metrics = self.meta.get("metrics", {})
        parts = [
            f"{name} " + "/".join(f"{metrics[name][s][0]:.2f}" for s in sorted(metrics[name]))
            for name in metrics
        ]
        scales = "/".join(f"x{s}" for s in self.meta.get("scales", ()))
        return f"{', '.join(parts)} dB PSNR at {scales}" if parts else "quality not measured"


BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


class CARNMWeights(Enum):
    """Weights for :func:`carn_stream.model.networks.carn_m`."""

    OFFICIAL = Weights(
        url="https://github.com/nmhkahn/CARN-pytorch/raw/master/checkpoint/carn_m.pth",
        sha256="d48a759a84509351facb6b7c6d5bd6edec98b98519b8c464ee4ab44d2ba964ff",
        meta={
            "name": "carn_m official",
            "architecture": "carn_m",
            "group": 4,
            "scales": (2, 3, 4),
            "num_params_file": 414_811,
            "license": "MIT (c) 2018 Namhyuk Ahn",
            "recipe": "https://github.com/nmhkahn/CARN-pytorch",
            "paper": PAPER_CARN_M,
            # Measured by `carn-stream eval` (protocol in docs/MODEL.md); PSNR dB / SSIM on Y.
            "metrics": {
                "Set5": {2: (37.62, 0.9586), 3: (34.03, 0.9238), 4: (31.86, 0.8899)},
                "Set14": {2: (33.28, 0.9145), 3: (30.09, 0.8370), 4: (28.40, 0.7764)},
            },
        },
    )
    #: Trained by this project (``carn-stream train``, docs/TRAINING.md) and shipped in the
    #: package: used when the official weights cannot be had, with a warning.
    BUNDLED = Weights(
        url="",
        sha256=BUNDLED_SHA256,
        bundled="carn_m_sunhays80.pth",
        meta=BUNDLED_META,
    )
    DEFAULT = OFFICIAL


# --------------------------------------------------------------------------- resolution


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    sha256: str,
    dest: Path,
    *,
    timeout: float = 30.0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Stream ``url`` to ``dest``; the file appears only once its checksum is verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name, suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    log.info("downloading %s to %s (no answer within %g s fails)", url, dest, timeout)
    if progress:
        progress(0, None)  # announced before connecting: a silent host is not silence here
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length")
            total_bytes = int(total) if total and total.isdigit() else None
            done = 0
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total_bytes)
        if total_bytes is not None and done != total_bytes:
            raise WeightsError(f"incomplete download of {url}: {done} of {total_bytes} bytes; "
                               "the download was discarded")  # fmt: skip
        if digest.hexdigest() != sha256:
            raise WeightsError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, "
                f"got {digest.hexdigest()}; the download was discarded"
            )
        tmp.replace(dest)
        log.info("downloaded %s (%.1f MB, checksum verified)", dest, done / 1e6)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def resolve_weights_file(
    weights: Weights,
    *,
    path: Path | None = None,
    cache_dir: Path,
    url: str | None = None,
    allow_download: bool = True,
    progress: ProgressCallback | None = None,
    fallback: Weights | None = None,
    on_fallback: Callable[[str], None] | None = None,
) -> Path:
    """Find a weights file: explicit path -> cache -> verified download -> ``fallback``
    (bundled weights, announced through ``on_fallback``) -> a clear error.

    ``path`` is what the user named (flag or environment); ``url`` overrides the registry's
    address (a mirror) but never its checksum.
    """
    if path is not None:
        _check_file(path)
        return path
    cached = cache_dir / weights.filename
    if cached.is_file():
        if _matches(cached, weights.sha256):
            return cached
        aside = cached.with_name(f"{cached.name}.mismatch")
        log.warning("the cached weights %s do not match their checksum (a cut-short or other "
                    "file): moved to %s, and fetched again", cached, aside)  # fmt: skip
        cached.replace(aside)
    source = url or weights.url
    if allow_download:
        try:
            return download(source, weights.sha256, cached, progress=progress)
        except http.client.HTTPException as exc:
            reason = (f"downloading {source} failed (not a valid HTTP answer: "
                      f"{type(exc).__name__} {str(exc).strip()!r})")  # fmt: skip
        except (urllib.error.URLError, OSError, ValueError, WeightsError) as exc:
            reason = f"downloading {source} failed ({exc})"
    else:
        reason = "downloading is disabled"
    if fallback is not None and fallback.bundled_path is not None:
        bundled = bundled_file(fallback)
        if on_fallback:
            on_fallback(
                f"using the bundled CARN-M weights (Set5 x2 {_set5_x2(fallback)}, official "
                f"{_set5_x2(weights)}) because the official ones are unavailable: {reason}. "
                f"{how_to_get(weights, cached)}"
            )
        return bundled
    raise WeightsError(
        f"no weights found: none given, none cached at {cached}, and {reason}. "
        f"{how_to_get(weights, cached)}"
    )


def _matches(path: Path, sha256: str) -> bool:
    """Whether the file's checksum is ``sha256`` (False where it cannot be read)."""
    try:
        return sha256_of(path) == sha256
    except OSError:
        return False


def _check_file(path: Path) -> None:
    """A clear error where ``path`` names no weights file."""
    if path.is_dir():
        raise WeightsError(f"weights file {path} is a folder, not a file")
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")


def how_to_get(weights: Weights, cached: Path) -> str:
    """One sentence: where the file is, its checksum, and the ways to hand it over."""
    return (
        f"To use them: download {weights.url} (sha256 {weights.sha256}) and pass "
        f"--weights PATH or set CARN_WEIGHTS=PATH, or save it as {cached}."
    )


def _set5_x2(weights: Weights) -> str:
    score = weights.meta.get("metrics", {}).get("Set5", {}).get(2)
    return f"{score[0]:.2f} dB" if score else "not measured"


def bundled_file(weights: Weights) -> Path:
    """The packaged weights file, checked against its registry checksum."""
    path = weights.bundled_path
    if path is None or not path.is_file():
        raise WeightsError(f"bundled weights {weights.bundled} are missing from the package")
    if sha256_of(path) != weights.sha256:
        raise WeightsError(f"bundled weights {path} do not match their checksum")
    return path


# --------------------------------------------------------------------------- loading


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a checkpoint file safely (tensors only), with a clear error when it is unusable."""
    _check_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise WeightsError(f"weights file {path} cannot be read ({exc.strerror or exc})") from exc
    except Exception as exc:
        if zipfile.is_zipfile(path):
            what = "a PyTorch checkpoint holding Python objects besides tensors"
        else:
            what = "not a PyTorch checkpoint (corrupt, or another kind of file)"
        raise WeightsError(
            f"weights file {path} is {what}; expected a CARN-M state dict of tensors (.pth)"
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} holds no state dict of tensors")
    return dict(obj)


_OFFICIAL_KEY_RULES = [
    (re.compile(r"^b(\d)\.b(\d)\.(body\..*)$"), "body.stages.{0}.stages.{1}.{2}"),
    (re.compile(r"^b(\d)\.c(\d)\.body\.0\.(.*)$"), "body.stages.{0}.fusions.{1}.0.{2}"),
    (re.compile(r"^c(\d)\.body\.0\.(.*)$"), "body.fusions.{0}.0.{1}"),
]


def is_official_format(state_dict: Mapping[str, Tensor]) -> bool:
    return "sub_mean.shifter.weight" in state_dict


def convert_official(state_dict: Mapping[str, Tensor], scales: tuple[int, ...]) -> dict:
    """Map the authors' checkpoint layout onto this package's module names.

    Their mean shift is a frozen identity 1x1 conv with bias -/+ mean; it becomes our
    ``rgb_mean`` buffer after checking it really is that.
    """
    sd = dict(state_dict)
    try:
        sub_w, sub_b = sd.pop("sub_mean.shifter.weight"), sd.pop("sub_mean.shifter.bias")
        add_w, add_b = sd.pop("add_mean.shifter.weight"), sd.pop("add_mean.shifter.bias")
    except KeyError as exc:
        raise WeightsError(f"official checkpoint lacks mean-shift entry {exc}") from exc
    eye = torch.eye(3).view(3, 3, 1, 1)
    if not (torch.equal(sub_w, eye) and torch.equal(add_w, eye) and torch.equal(sub_b, -add_b)):
        raise WeightsError("official checkpoint's mean shift is not an identity -/+ mean")
    out: dict[str, Tensor] = {"rgb_mean": add_b.view(1, 3, 1, 1).clone()}
    for key, value in sd.items():
        out[_official_key(key, scales)] = value
    return out


def _official_key(key: str, scales: tuple[int, ...]) -> str:
    for pattern, template in _OFFICIAL_KEY_RULES:
        m = pattern.match(key)
        if m:
            groups = [str(int(g) - 1) if g.isdigit() else g for g in m.groups()]
            return template.format(*groups)
    m = re.match(r"^upsample\.up(\d?)\.body\.(.*)$", key)
    if m:
        scale = m.group(1) or (str(scales[0]) if len(scales) == 1 else "?")
        return f"upsamplers.x{scale}.{m.group(2)}"
    return key  # entry.*, exit.*: same names; anything else is reported by the strict load


@dataclass(frozen=True)
class WeightsSource:
    """Which weights file a model holds, and why when it stands in for the official ones."""

    file: Path
    warning: str | None = None

    @property
    def name(self) -> str:
        """The file's name (what may be shown publicly: no server path)."""
        return self.file.name


def load_weights(model: nn.Module, weights: CARNMWeights | Weights | Path | str, **resolve) -> Path:
    """Load a registry entry or a file into ``model``; any key or shape mismatch raises.

    ``resolve`` is passed to :func:`resolve_weights_file` for registry entries (``cache_dir``,
    the folder they are found in or downloaded into, is needed for all but bundled weights).
    Returns the file loaded.
    """
    if isinstance(weights, Enum):  # a registry member
        weights = weights.value
    if isinstance(weights, Weights):
        if weights.bundled_path is not None and not weights.url:
            path = bundled_file(weights)
        elif "cache_dir" not in resolve:
            raise WeightsError(
                f"{weights.filename} is found in (or downloaded into) a cache folder: "
                "pass cache_dir"
            )
        else:
            path = resolve_weights_file(weights, **resolve)
    else:
        path = Path(weights)
    load_state_dict_strict(model, read_state_dict(path), source=str(path))
    return path


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    if is_official_format(state_dict):
        state_dict = convert_official(state_dict, tuple(getattr(model, "scales", ())))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        details = "; ".join(
            f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", wrong_shape),
            )
            if items
        )
        raise WeightsError(f"weights {source} do not fit the network: {details}")
    model.load_state_dict(state_dict, strict=True)
