"""Training: the recipe's pieces, resumable runs, short real runs, per-video tuning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model import carn_m
from model.training import TrainConfig, Trainer, init_uniform, read_log
from model.training_data import Pair, PatchBatches, augment, make_pairs


@pytest.fixture(scope="module")
def train_images(data_dir: Path) -> list[np.ndarray]:
    """Six SunHays80 photos, centre 192x192 crops (training data, never Set5/Set14)."""
    from pipeline.images import iter_images

    images = []
    for _, image in list(iter_images(data_dir / "train" / "SunHays80"))[:6]:
        h, w = image.shape[:2]
        images.append(
            np.ascontiguousarray(image[h // 2 - 96 : h // 2 + 96, w // 2 - 96 : w // 2 + 96])
        )
    return images


def test_config_defaults_are_the_papers_recipe():
    c = TrainConfig()
    assert (c.steps, c.batch_size, c.patch_size, c.scales) == (600_000, 64, 64, (2, 3, 4))
    assert (c.lr, c.lr_decay_steps, c.lr_decay_factor) == (1e-4, 400_000, 0.5)
    assert (c.adam_beta1, c.adam_beta2, c.adam_eps) == (0.9, 0.999, 1e-8)
    assert c.loss == "l1" and c.augment and c.init == "uniform"


def test_config_rejects_bad_and_unknown_values():
    with pytest.raises(ValueError, match="scales"):
        TrainConfig(scales=(5,))
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"stepz": 3})


def test_init_is_uniform_within_one_over_sqrt_fan_in():
    torch.manual_seed(0)
    model = carn_m()
    init_uniform(model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) > 10
    for conv in convs:
        k = 1 / math.sqrt(conv.in_channels // conv.groups * conv.kernel_size[0] ** 2)
        for tensor in (conv.weight, conv.bias):
            assert tensor.abs().max() <= k
        # U(-k, k) has standard deviation k / sqrt(3); large layers land within 5%.
        if conv.weight.numel() > 5000:
            assert conv.weight.std().item() == pytest.approx(k / math.sqrt(3), rel=0.05)


def test_batches_have_one_scale_each_aligned_pairs_and_all_augmentations():
    rng = np.random.default_rng(1)
    pairs = {}
    for s in (2, 3, 4):
        lr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        # Block-constant HR: any flip/rotation applied to both keeps hr == repeat(lr).
        pairs[s] = [Pair(np.repeat(np.repeat(lr, s, 0), s, 1), lr)]
    batches = PatchBatches(pairs, batch_size=6, patch_size=12, seed=7)
    seen = set()
    for step in range(30):
        scale, lr, hr = batches[step]
        seen.add(scale)
        assert lr.shape == (6, 3, 12, 12) and lr.dtype == torch.uint8
        assert hr.shape == (6, 3, 12 * scale, 12 * scale)
        expanded = lr.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        assert torch.equal(hr, expanded)
    assert seen == {2, 3, 4}
    # Batch k depends only on (seed, k): the same in another instance, different for k+1.
    again = PatchBatches(pairs, batch_size=6, patch_size=12, seed=7)
    assert torch.equal(again[5][1], batches[5][1])
    assert not torch.equal(batches[5][1], batches[6][1])


def test_augment_gives_the_eight_dihedral_variants():
    lr = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    hr = lr.copy()
    variants = {
        augment(lr, hr, f, t)[0].tobytes() + bytes(augment(lr, hr, f, t)[0].shape)
        for f in (False, True)
        for t in range(4)
    }
    assert len(variants) == 8


def test_pairs_use_the_evaluation_bicubic_and_skip_small_images(train_images):
    from model.evaluation import degrade

    pairs = make_pairs([train_images[0], np.zeros((20, 20, 3), np.uint8)], (2, 4), 32)
    assert [len(p) for p in pairs.values()] == [1, 1]
    assert np.array_equal(pairs[2][0].lr, degrade(train_images[0], 2))
    with pytest.raises(ValueError, match="large enough"):
        make_pairs([np.zeros((20, 20, 3), np.uint8)], (2,), 32)


def _tiny_config(**kw) -> TrainConfig:
    base = dict(
        steps=8, batch_size=2, patch_size=16, log_every=1, checkpoint_every=4, val_every=0, seed=3
    )
    return TrainConfig(**{**base, **kw})


def _fresh_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = carn_m()
    init_uniform(model)
    return model


def test_resumed_run_continues_the_same_curve(train_images, tmp_path):
    straight = Trainer(_fresh_model(), _tiny_config(), tmp_path / "a", train_images)
    straight.run()

    first = Trainer(_fresh_model(), _tiny_config(steps=4), tmp_path / "b", train_images)
    first.run()
    resumed = Trainer(_fresh_model(), _tiny_config(), tmp_path / "b", train_images)
    assert resumed.load_checkpoint() and resumed.step == 4
    resumed.run()

    losses_a = [r["loss"] for r in read_log(tmp_path / "a") if "loss" in r]
    losses_b = [r["loss"] for r in read_log(tmp_path / "b") if "loss" in r]
    assert len(losses_a) == 8 and losses_b == losses_a
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.optimizer.state_dict()["state"][0]["step"] == 8
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["steps"] == 8 and config["batch_size"] == 2


def test_checkpoint_refuses_another_configuration(train_images, tmp_path):
    Trainer(_fresh_model(), _tiny_config(steps=4), tmp_path, train_images).run()
    other = Trainer(_fresh_model(), _tiny_config(lr=1e-3), tmp_path, train_images)
    with pytest.raises(ValueError, match="another configuration"):
        other.load_checkpoint()


def test_learning_rate_halves_on_schedule(train_images, tmp_path):
    config = _tiny_config(steps=6, lr=1e-3, lr_decay_steps=2, checkpoint_every=100)
    Trainer(_fresh_model(), config, tmp_path, train_images).run()
    lrs = [r["lr"] for r in read_log(tmp_path) if "lr" in r]
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
