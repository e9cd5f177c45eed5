"""Training CARN-M: the paper's recipe as the default configuration, resumable runs.

A run lives in one folder: ``config.json`` (every value used), ``log.jsonl`` (one JSON object
per logged step or validation), ``checkpoint.pt`` (model, optimizer, scheduler, RNG and step:
a resumed run continues the same curve) and ``weights.pth`` (the model alone, loadable
anywhere a weights file is accepted).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from carn_stream.model.evaluation import evaluate
from carn_stream.model.inference import upscale_rgb
from carn_stream.model.networks import CARN
from carn_stream.model.recipe import TrainConfig
from carn_stream.model.training_data import Pair, PatchBatches, make_pairs

CONFIG_FILE, LOG_FILE, CHECKPOINT_FILE, WEIGHTS_FILE = (
    "config.json",
    "log.jsonl",
    "checkpoint.pt",
    "weights.pth",
)


def init_uniform(model: nn.Module) -> None:
    """The paper's initialisation: every conv weight and bias ~ U(-k, k), k = 1/sqrt(fan_in).

    ``fan_in`` counts what one output value sees: input channels per group x kernel area.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            k = 1.0 / math.sqrt(fan_in(module))
            nn.init.uniform_(module.weight, -k, k)
            if module.bias is not None:
                nn.init.uniform_(module.bias, -k, k)


def fan_in(conv: nn.Conv2d) -> int:
    return conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]


@dataclass
class Progress:
    """What the trainer reports after every step (for a progress bar)."""

    step: int
    steps: int
    loss: float
    lr: float
    steps_per_second: float
    eta_seconds: float
    validation: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Trains ``model`` on HR images into ``run_dir``; :meth:`run` resumes from a checkpoint."""

    def __init__(
        self,
        model: CARN,
        config: TrainConfig,
        run_dir: Path,
        train_images: Sequence[np.ndarray],
        val_images: Sequence[tuple[str, np.ndarray]] = (),
        device: torch.device | str = "cpu",
        on_progress: Callable[[Progress], None] | None = None,
        pairs: dict[int, list[Pair]] | None = None,
        *,
        cpu_bf16: bool = False,
        another_run: Literal["refuse", "restart"] = "refuse",
    ) -> None:
        """``pairs``: LR/HR pairs made elsewhere (e.g. by an encoder) instead of the bicubic
        LR of ``train_images``. ``cpu_bf16``: this CPU computes bf16 in hardware (AMX, AVX-512
        BF16), so ``amp="auto"`` trains in bf16 on it as on CUDA. ``another_run``: what a
        checkpoint in ``run_dir`` of another run (another configuration, other training data
        or other starting weights) meets: refused, or replaced (a folder the caller owns)."""
        missing = sorted(set(config.scales) - set(model.scales))
        if missing:
            raise ValueError(f"the network has no upsampler for scale(s) {missing}")
        self.config, self.run_dir = config, run_dir
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.on_progress = on_progress
        self.val_images = [(n, _centre_crop(im, config.val_max_side)) for n, im in val_images]
        self.pairs = pairs or make_pairs(train_images, config.scales, config.patch_size)
        self.another_run = another_run
        #: what the run learns from and starts at: a checkpoint of other data or other
        #: starting weights is not this run's (a rerun took one up and reported it as its own)
        self.origin = {"data": _pairs_digest(self.pairs), "start": _state_digest(model)}
        self.optimizer = torch.optim.Adam(
            model.parameters(),
            lr=config.lr,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps,
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, config.lr_decay_steps, config.lr_decay_factor
        )
        self.step = 0
        self._restored = False
        self.amp_dtype = _amp_dtype(config.amp, self.device, cpu_bf16)
        self.layout = _training_layout(self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.loss_fn = nn.L1Loss() if config.loss == "l1" else nn.MSELoss()

    @property
    def precision(self) -> str:
        """What the forward passes compute in: ``fp32``, ``bf16`` or ``fp16``."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    # ------------------------------------------------------------------ run folder

    @classmethod
    def resume_config(cls, run_dir: Path) -> TrainConfig:
        return TrainConfig.from_file(run_dir / CONFIG_FILE)

    def save_checkpoint(self) -> Path:
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "config": self.config.to_dict(),
            "origin": self.origin,
        }
        path = self.run_dir / CHECKPOINT_FILE
        _atomic_save(state, path)
        _atomic_save(self.model.state_dict(), self.run_dir / WEIGHTS_FILE)
        return path

    def load_checkpoint(self) -> bool:
        """Restore the run folder's checkpoint, if any; later log lines are discarded."""
        path = self.run_dir / CHECKPOINT_FILE
        if self._restored or not path.is_file():
            return self._restored
        state = torch.load(path, map_location=self.device, weights_only=False)
        other = None
        if _without_steps(state["config"]) != _without_steps(self.config.to_dict()):
            other = "with another configuration"
        elif state.get("origin", self.origin)["data"] != self.origin["data"]:
            other = "on other training data (another video, copy, codec, CRF or frames)"
        elif state.get("origin", self.origin)["start"] != self.origin["start"]:
            other = "from other starting weights"
        if other is not None and self.another_run == "restart":
            for name in (CHECKPOINT_FILE, WEIGHTS_FILE, LOG_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
            return False
        if other is not None:
            raise ValueError(f"{path} was written {other}: use another run folder, or remove it")
        if state["step"] > self.config.steps:
            raise ValueError(f"{self.run_dir} is already at step {state['step']}, past the "
                             f"{self.config.steps} asked for: a resumed run may only raise its "
                             "steps (or use another run folder)")  # fmt: skip
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.step = state["step"]
        self._restored = True
        _truncate_log(self.run_dir / LOG_FILE, self.step)
        return True

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ training

    def run(self) -> dict[str, Any]:
        """Train to ``config.steps`` (from the checkpoint when there is one)."""
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A checkpoint of another configuration is refused before the folder changes (its
        # config.json was rewritten first, and the run could not be resumed any more).
        if not self.load_checkpoint():
            _truncate_log(self.run_dir / LOG_FILE, 0)  # a run stopped before its checkpoint
        _atomic_write_text(self.run_dir / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")
        if self.step >= cfg.steps:
            return {"step": self.step, "weights": str(self.run_dir / WEIGHTS_FILE), "val": {}}
        batches = PatchBatches(self.pairs, cfg.batch_size, cfg.patch_size, cfg.seed, cfg.augment)
        workers = cfg.workers if cfg.workers >= 0 else (4 if self.device.type == "cuda" else 0)
        loader = DataLoader(
            batches,
            batch_size=None,
            sampler=range(self.step, cfg.steps),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        self.model.train()
        self.model.to(memory_format=self.layout)
        try:
            self._steps(loader)
        finally:
            self.model.to(memory_format=torch.contiguous_format)
        return self._finish()

    def _steps(self, loader: DataLoader) -> None:
        """The loader's steps, with their log lines, checkpoints and progress calls."""
        cfg = self.config
        started, first_step = time.monotonic(), self.step
        window: list[float] = []
        for scale, low, high in loader:
            learning_rate = self.optimizer.param_groups[0]["lr"]  # the rate this step used
            loss = self._train_step(scale, low, high)
            self.step += 1
            window.append(loss)
            rate = (self.step - first_step) / max(time.monotonic() - started, 1e-9)
            progress = Progress(
                self.step,
                cfg.steps,
                loss,
                learning_rate,
                rate,
                (cfg.steps - self.step) / rate if rate > 0 else math.inf,
            )
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log(
                    {
                        "step": self.step,
                        "loss": float(np.mean(window)),
                        "lr": progress.lr,
                        "steps_per_second": round(rate, 4),
                        "eta_seconds": round(progress.eta_seconds, 1),
                    }
                )
                window.clear()
            if cfg.val_every and self.step % cfg.val_every == 0 and self.step < cfg.steps:
                progress.validation = self.validate()
            if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()
            if self.on_progress:
                self.on_progress(progress)

    def _train_step(self, scale: int, low: torch.Tensor, high: torch.Tensor) -> float:
        """One optimiser step on a batch of low-resolution inputs and their HR targets."""
        cfg = self.config
        x = low.to(self.device, non_blocking=True).float().div_(255)
        x = x.contiguous(memory_format=self.layout)
        y = high.to(self.device, non_blocking=True).float().div_(255)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype)
        ):
            out = self.model(x, scale)
        loss = self.loss_fn(out.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())

    def validate(self) -> dict[str, float]:
        """PSNR/SSIM per scale on the validation images (the evaluation protocol)."""
        if not self.val_images:
            return {}
        self.model.eval()
        record: dict[str, Any] = {"step": self.step, "validation": {}}
        for scale in self.config.scales:
            summary = evaluate(
                self.val_images, lambda im, s: upscale_rgb(self.model, im, s), scale
            ).summary()
            record["validation"][f"x{scale}"] = {
                k: round(summary[k], 4) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")
            }
        self.model.train()
        self._log(record)
        return {k: v["psnr"] for k, v in record["validation"].items()}

    def _finish(self) -> dict[str, Any]:
        validation = self.validate()
        self.save_checkpoint()
        return {"step": self.step, "weights": str(self.run_dir / WEIGHTS_FILE), "val": validation}


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The run's log records (a line cut short by a crash is left out)."""
    path = run_dir / LOG_FILE
    if not path.is_file():
        return []
    return [record for _, record in _log_lines(path)]


def _log_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each whole line of a log and its record; a torn last line (a crash while it was
    written) does not read and is dropped."""
    lines = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            lines.append((line, record))
    return lines


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = [line for line, record in _log_lines(path) if record["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _pairs_digest(pairs: dict[int, list[Pair]]) -> str:
    """A digest of the training pairs' pixels, per scale, in order."""
    digest = hashlib.sha256()
    for scale in sorted(pairs):
        digest.update(f"x{scale}:{len(pairs[scale])}".encode())
        for pair in pairs[scale]:
            for image in (pair.lr, pair.hr):
                digest.update(repr(image.shape).encode())
                digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()[:16]


def _state_digest(model: nn.Module) -> str:
    """A digest of a model's parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def _atomic_write_text(path: Path, text: str) -> None:
    """``text`` in ``path``, whole or not at all (renamed into place)."""
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    part.replace(path)


def _without_steps(config: dict[str, Any]) -> dict[str, Any]:
    """A run may be extended: its configuration otherwise stays what it was."""
    return {k: v for k, v in config.items() if k != "steps"}


def _amp_dtype(amp: str, device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """The autocast type: ``auto`` is bf16 on CUDA and on a CPU with bf16 in hardware (emulated
    bf16 is several times slower than fp32)."""
    if amp == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_bf16)
        return torch.bfloat16 if native else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _training_layout(device: torch.device) -> torch.memory_format:
    """Channels-last on CPUs, oneDNN's own layout: steps 1.1-1.5x as fast as in the default
    one (``bench/train_step.py``); the model is handed back in its usual layout."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _centre_crop(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = max((h - side) // 2, 0), max((w - side) // 2, 0)
    return image[top : top + side, left : left + side]


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.part")
    torch.save(obj, tmp)
    os.replace(tmp, path)
