"""``carn-stream train`` and ``carn-stream tune``: data gathering, options, reports."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from carn_stream.progress import ProgressBar
from carn_stream.settings import Settings

#: Frames taken from each video found in a training folder.
FRAMES_PER_VIDEO = 32


class TrainingError(Exception):
    """A training request that cannot be run as given."""


# --------------------------------------------------------------------------- options


def add_config_options(
    p: argparse.ArgumentParser, defaults: dict[str, Any] | None = None, scales: bool = True
) -> None:
    """One flag per :class:`carn_stream.model.training.TrainConfig` field (``--batch-size`` ...);
    ``scales=False`` for a command whose ``--scale`` says what it trains."""
    from carn_stream.model.recipe import TrainConfig

    p.add_argument("--config", type=Path, help="JSON file of training settings")
    group = p.add_argument_group("training settings (override --config and the defaults)")
    base = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = (defaults or {}).get(f.name, getattr(base, f.name))
        if f.name == "init" or (f.name == "scales" and not scales):
            continue  # the weights to start from are --init
        if f.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "scales":
            group.add_argument(flag, type=_scales, help=f"comma-separated (default {default})")
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            group.add_argument(flag, type=kind, help=f"default {default}")


def _scales(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected scales like 2,3,4, got {text!r}") from exc


def build_config(args: argparse.Namespace, defaults: dict[str, Any] | None = None):
    from carn_stream.model.recipe import TrainConfig

    config = TrainConfig.from_dict(defaults or {})
    if getattr(args, "config", None):
        config = TrainConfig.from_dict({**config.to_dict(), **_read_json(args.config)})
    overrides = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    overrides.pop("init")
    return config.with_overrides(**overrides)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"--config {path}: not a readable JSON file ({exc})") from exc


# --------------------------------------------------------------------------- data


def gather_images(folders: Sequence[Path], frames_per_video: int) -> list[tuple[str, np.ndarray]]:
    """Every image in the folders, plus evenly spaced frames of every video in them."""
    from carn_stream.pipeline.media.images import IMAGE_SUFFIXES, read_rgb
    from carn_stream.pipeline.media.input_formats import VIDEO_SUFFIXES
    from carn_stream.pipeline.sampling import sample_frames

    items: list[tuple[str, np.ndarray]] = []
    for folder in folders:
        if not folder.is_dir():
            raise TrainingError(f"--data {folder}: not a folder")
        for path in sorted(folder.iterdir()):
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                items.append((path.name, read_rgb(path)))
            elif suffix in VIDEO_SUFFIXES:
                for i, frame in enumerate(sample_frames(path, frames_per_video)):
                    items.append((f"{path.name}#{i}", frame))
    if not items:
        raise TrainingError(f"no images or videos found in {', '.join(map(str, folders))}")
    return items


def split_holdout(items: list, every: int) -> tuple[list, list]:
    """Every ``every``-th item (starting in the middle of the first stride) is held out."""
    if every < 2:
        return items, []
    held = [i for i in range(len(items)) if i % every == every // 2]
    keep = [x for i, x in enumerate(items) if i not in held]
    return keep, [items[i] for i in held]


def _start_model(settings: Settings, init: str | None, seed: int):
    import torch

    from carn_stream.loading import load_model
    from carn_stream.model import carn_m
    from carn_stream.model.training import init_uniform

    if init is None:
        torch.manual_seed(seed)
        model = carn_m()
        init_uniform(model)
        return model
    weights = None if init == "official" else Path(init)
    return load_model(settings.with_overrides(weights=weights, device="cpu"))[0]


class _TrainProgress:
    def __init__(self, label: str, total: int, start: int) -> None:
        self.bar = ProgressBar(total - start, label, unit="steps")

    def __call__(self, p) -> None:
        val = "  ".join(f"val {k} {v:.2f} dB" for k, v in p.validation.items())
        self.bar.update(note=f"step {p.step} loss {p.loss:.4f} lr {p.lr:.2e} {val}".rstrip())


# --------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from carn_stream.model.inference import pick_device
    from carn_stream.model.training import CHECKPOINT_FILE, Trainer
    from carn_stream.pipeline.engine.cpu import cpu_has_native_bf16

    run_dir: Path = args.run_dir
    if args.resume:
        if not (run_dir / CHECKPOINT_FILE).is_file():
            raise TrainingError(f"--resume: {run_dir} holds no {CHECKPOINT_FILE}")
        config = Trainer.resume_config(run_dir).with_overrides(steps=args.steps)
    else:
        if (run_dir / CHECKPOINT_FILE).exists():
            raise TrainingError(
                f"{run_dir} already holds a run; pass --resume to continue it or pick a new "
                "--run-dir"
            )
        config = build_config(args, {"amp": settings.train_amp})
    items = gather_images(args.data, args.frames_per_video)
    if args.val:
        train_items, val_items = items, gather_images([args.val], args.frames_per_video)
    else:
        train_items, val_items = split_holdout(items, args.holdout_every)
    print(
        f"training on {len(train_items)} images, validating on {len(val_items)}; "
        f"{config.steps} steps of {config.batch_size} x {config.patch_size}px "
        f"at x{'/x'.join(map(str, config.scales))} -> {run_dir}",
        file=sys.stderr,
    )
    model = _start_model(settings, args.init, config.seed)
    device = pick_device(settings.device)
    trainer = Trainer(model, config, run_dir, [im for _, im in train_items], val_items, device,
                      cpu_bf16=cpu_has_native_bf16())  # fmt: skip
    print(f"training in {trainer.precision} on {device}", file=sys.stderr)
    if trainer.load_checkpoint():  # (a run of other data, or past --steps, is refused)
        print(f"resuming at step {trainer.step} with the run's own settings "
              f"({run_dir / 'config.json'}); of this command's, only --steps applies",
              file=sys.stderr)  # fmt: skip
    trainer.on_progress = _TrainProgress("train", config.steps, trainer.step)
    summary = trainer.run()
    trainer.on_progress.bar.close()
    print(json.dumps(summary))
    return 0


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    """Fine-tune on one video's frames; report held-out PSNR against the starting weights."""
    if getattr(args, "degradation", "bicubic") == "encoded":
        from carn_stream.assess_command import cmd_tune_encoded

        return cmd_tune_encoded(args, settings)
    import torch

    from carn_stream.model.evaluation import evaluate
    from carn_stream.model.inference import pick_device, upscale_rgb
    from carn_stream.model.recipe import TUNE_DEFAULTS
    from carn_stream.model.training import WEIGHTS_FILE, Trainer
    from carn_stream.model.tune_report import ScaleFigures, TuneReport
    from carn_stream.pipeline.engine.cpu import cpu_has_native_bf16

    if args.output.suffix != ".pth":
        raise TrainingError(f"output {args.output} must end in .pth")
    if not args.output.parent.is_dir():
        raise TrainingError(f"output folder {args.output.parent} does not exist")
    if args.output.is_dir():  # was found out after the training, by torch.save
        raise TrainingError(f"output {args.output} is a folder")
    scales = tuple(sorted(set(args.scale)))
    # --scale decides, a --config file's scales too (it trained at x3 and reported x2)
    config = build_config(args, {**TUNE_DEFAULTS, "amp": settings.train_amp})
    config = config.with_overrides(scales=scales)
    from carn_stream.pipeline.sampling import sample_frames

    frames = sample_frames(args.video, args.frames)
    fits = min((min(f.shape[:2]) for f in frames), default=0) // max(scales)
    if getattr(args, "patch_size", None) is None and 8 <= fits < config.patch_size:
        # A small video: the default patch shrinks to fit its frames (a given one does not).
        config = replace(config, patch_size=fits)
    train, held = split_holdout(list(enumerate(frames)), args.holdout_every)
    if not held or not train:
        raise TrainingError(f"{args.video}: too few frames ({len(frames)}) to hold some out")
    val = [(f"frame{i}", f) for i, f in held]
    device = pick_device(settings.device)
    model = _start_model(settings, args.init, config.seed).to(device)

    def score() -> dict[int, dict[str, float]]:
        model.eval()
        upscale = lambda im, s: upscale_rgb(model, im, s)  # noqa: E731
        return {s: evaluate(val, upscale, s).summary() for s in scales}

    before = score()
    # (a folder of its own when none is given, removed at the end: one was left in the
    # temporary folder by every tune, the service's too)
    own = args.run_dir is None
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="carn-tune-"))
    try:
        trainer = Trainer(model, config, run_dir, [f for _, f in train], (), device,
                          cpu_bf16=cpu_has_native_bf16())  # fmt: skip
        if trainer.load_checkpoint():  # the run folder of an interrupted tune
            print(f"resuming at step {trainer.step} from {run_dir}", file=sys.stderr)
        label = f"tune x{'/x'.join(map(str, scales))}"
        trainer.on_progress = _TrainProgress(label, config.steps, trainer.step)
        trainer.run()
        trainer.on_progress.bar.close()
        after = score()
        state = torch.load(run_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        part = args.output.with_name(f".{args.output.name}.part")
        torch.save(state, part)
        part.replace(args.output)  # a reader never sees half a weights file
        report = TuneReport(
            video=str(args.video),
            scales=scales,
            train_frames=len(train),
            heldout_frames=len(held),
            steps=config.steps,
            per_scale={
                s: ScaleFigures(
                    generic_psnr=round(before[s]["psnr"], 3),
                    tuned_psnr=round(after[s]["psnr"], 3),
                    bicubic_psnr=round(after[s]["bicubic_psnr"], 3),
                )
                for s in scales
            },
            weights=str(args.output),
            weights_bytes=args.output.stat().st_size,
            config=config.to_dict(),
        )
        report.write(args.output.with_suffix(".json"))
        print(json.dumps(report.to_dict(with_config=False)))
        return 0
    finally:
        if own:
            shutil.rmtree(run_dir, ignore_errors=True)
