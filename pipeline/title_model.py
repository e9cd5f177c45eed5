"""A title's own model: CARN-M fine-tuned on (the title's encoded low-resolution frames, the
original frames), so that it learns to undo this title's downscale *and* its encoding.

Frames are spread over the title outside an excluded range (the frames a report measures);
every ``holdout_every``-th of them is held out and scored before and after (PSNR on BT.601 luma,
the evaluation protocol's). The run folder makes the training resumable as ``tune``'s is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from carn_stream.model.evaluation import Upscaler, luma_scores
from carn_stream.model.imresize import bicubic_uint8
from carn_stream.model.inference import upscale_rgb
from carn_stream.model.metrics import mean_psnr
from carn_stream.model.networks import CARN
from carn_stream.model.recipe import TrainConfig
from carn_stream.model.training import WEIGHTS_FILE, Progress, Trainer
from carn_stream.model.training_data import given_pairs
from carn_stream.pipeline.engine.cpu import cpu_has_native_bf16
from carn_stream.pipeline.title_frames import FramePair, frame_count, read_pairs, spread


@dataclass(frozen=True)
class TitleModelReport:
    """What training a title's model did, on its held-out frames."""

    weights: str
    scale: int
    train_frames: int
    heldout_frames: int
    steps: int
    generic_psnr: float
    tuned_psnr: float
    bicubic_psnr: float
    read_seconds: float
    train_seconds: float
    train_precision: str = "fp32"  #: what the training steps computed in (bf16 where fast)

    @property
    def gain_db(self) -> float:
        return self.tuned_psnr - self.generic_psnr

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gain_db": round(self.gain_db, 3)}


def heldout_psnr(pairs: list[FramePair], upscale: Upscaler, scale: int) -> float:
    """Mean luma PSNR of ``upscale(lr)`` against the originals."""
    return mean_psnr([luma_scores(upscale(p.lr, scale), p.hr, scale)[0] for p in pairs])


def train_title_model(
    model: CARN,
    source: str | Path,
    copy: str | Path,
    scale: int,
    weights_out: Path,
    config: TrainConfig,
    run_dir: Path,
    *,
    frames: int = 48,
    exclude: range = range(0),
    holdout_every: int = 7,
    device: str | torch.device = "cpu",
    on_progress: Callable[[Progress], None] | None = None,
    upscaler: Callable[[CARN], Upscaler] | None = None,
    another_run: Literal["refuse", "restart"] = "refuse",
) -> TitleModelReport:
    """Fine-tune ``model`` on pairs of ``copy`` (the title encoded at 1/``scale`` size) and
    ``source``; write the weights to ``weights_out``. ``config.scales`` must be ``(scale,)``.
    ``upscaler`` makes the held-out frames' upscaler from the model (default: fp32 PyTorch;
    an engine is faster). ``another_run``: what a checkpoint in ``run_dir`` of another run
    meets (:class:`~carn_stream.model.training.Trainer`)."""
    if tuple(config.scales) != (scale,):
        raise ValueError(f"the training scales {config.scales} must be ({scale},)")
    began = time.monotonic()
    indices = spread(frame_count(copy), frames, exclude)
    pairs = read_pairs(source, copy, indices, scale)
    is_held = [holdout_every >= 2 and k % holdout_every == holdout_every // 2
               for k in range(len(pairs))]  # fmt: skip
    held = [p for p, h in zip(pairs, is_held, strict=True) if h]
    train = [p for p, h in zip(pairs, is_held, strict=True) if not h]
    if not train or not held:
        raise ValueError(f"{copy}: too few frames ({len(pairs)}) to train and hold some out")
    read = time.monotonic() - began
    model = model.to(device)

    def score() -> float:
        model.eval()
        run = upscaler(model) if upscaler else lambda im, s: upscale_rgb(model, im, s)
        return heldout_psnr(held, run, scale)

    generic = score()
    bicubic = heldout_psnr(held, lambda im, s: bicubic_uint8(im, scale=float(s)), scale)
    started = time.monotonic()
    trainer = Trainer(model, config, run_dir, [], (), device, on_progress,
                      pairs=given_pairs([(p.lr, p.hr) for p in train], scale, config.patch_size),
                      cpu_bf16=cpu_has_native_bf16(), another_run=another_run)  # fmt: skip
    trainer.run()
    trained = time.monotonic() - started
    tuned = score()
    state = torch.load(run_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    weights_out.parent.mkdir(parents=True, exist_ok=True)
    part = weights_out.with_name(f".{weights_out.name}.part")
    torch.save(state, part)
    part.replace(weights_out)
    return TitleModelReport(str(weights_out), scale, len(train), len(held), config.steps,
                            round(generic, 3), round(tuned, 3), round(bicubic, 3),
                            round(read, 1), round(trained, 1), trainer.precision)  # fmt: skip
