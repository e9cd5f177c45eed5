"""Shared fixtures: the ground-truth data beside the repo and the official CARN-M."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import DATA_DIR, official_weights_path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"test data not found at {DATA_DIR} (set CARN_STREAM_TEST_DATA)")
    return DATA_DIR


@pytest.fixture(scope="session")
def weights_path(data_dir: Path) -> Path:
    path = official_weights_path()
    if not path.is_file():
        pytest.fail(f"official CARN-M weights not found at {path} (set CARN_WEIGHTS)")
    return path


@pytest.fixture(scope="session")
def official_carn_m(weights_path: Path):
    from carn_stream.model import carn_m, load_weights

    model = carn_m().eval()
    load_weights(model, weights_path)
    return model


@pytest.fixture(autouse=True)
def _no_user_cache(tmp_path_factory, monkeypatch):
    """Keep tests off the user's cache and off the network, and on one precision: ``auto``
    means bf16, an OpenVINO mode or fp32 depending on the CPU, so a test that means another
    mode (or auto itself) says so explicitly. Training likewise runs in fp32 (its ``auto`` is
    bf16 on CPUs with bf16 in hardware) unless a test asks for another."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("CARN_STREAM_ALLOW_DOWNLOAD", "0")
    monkeypatch.setenv("CARN_STREAM_PRECISION", "fp32")
    monkeypatch.setenv("CARN_STREAM_TRAIN_AMP", "off")
