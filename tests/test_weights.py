"""Official checkpoint loading, the weights registry and how a weights file is found."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from carn_stream.model import CARNMWeights, WeightsError, carn, carn_m, load_weights
from carn_stream.model.weights import download, read_state_dict, resolve_weights_file, sha256_of
from carn_stream.settings import Settings
from tests.helpers import serve_directory

OFFICIAL = CARNMWeights.OFFICIAL.value


def test_official_file_is_the_registered_one(weights_path):
    assert sha256_of(weights_path) == OFFICIAL.sha256
    state = read_state_dict(weights_path)
    assert sum(t.numel() for t in state.values()) == OFFICIAL.meta["num_params_file"] == 414_811


def test_official_checkpoint_loads_strictly_and_accounts_for_every_value(weights_path):
    model = carn_m()
    load_weights(model, weights_path)
    file_state = read_state_dict(weights_path)
    # 58 tensors in the file: 4 mean-shift tensors become the 3-value rgb_mean buffer.
    assert len(file_state) == 58 and len(model.state_dict()) == 55
    learnable = sum(p.numel() for p in model.parameters())
    assert learnable + 24 == 414_811  # two frozen 3x3 identity + bias mean shifts
    assert torch.allclose(model.rgb_mean.flatten(), torch.tensor([0.4488, 0.4371, 0.4040]))
    assert torch.equal(model.entry.weight, file_state["entry.weight"])
    assert torch.equal(model.upsamplers["x4"][3].weight, file_state["upsample.up4.body.3.weight"])
    assert torch.equal(model.body.fusions[2][0].bias, file_state["c3.body.0.bias"])


def test_registry_entry_carries_url_checksum_license_and_metrics():
    assert (
        OFFICIAL.url == "https://github.com/nmhkahn/CARN-pytorch/raw/master/checkpoint/carn_m.pth"
    )
    assert OFFICIAL.sha256 == "d48a759a84509351facb6b7c6d5bd6edec98b98519b8c464ee4ab44d2ba964ff"
    assert "MIT" in OFFICIAL.meta["license"]
    assert set(OFFICIAL.meta["metrics"]) == {"Set5", "Set14"}
    assert CARNMWeights.DEFAULT is CARNMWeights.OFFICIAL


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: carn(), "missing"),  # plain residual blocks: other keys
        (lambda: carn_m(group=2), "shape mismatch"),  # other group size: other shapes
        (lambda: carn_m(recursive=False), "missing"),  # three units per block expected
        (lambda: carn_m(scales=(2,)), "unexpected"),  # the file has x3/x4 branches too
    ],
)
def test_a_checkpoint_that_does_not_fit_fails_loudly(weights_path, build, message):
    with pytest.raises(WeightsError, match=message):
        load_weights(build(), weights_path)


def test_a_tampered_checkpoint_fails_loudly(weights_path, tmp_path):
    state = read_state_dict(weights_path)
    state["b1.b9.body.0.weight"] = state.pop("b1.b1.body.0.weight")
    bad = tmp_path / "renamed.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"unexpected: body\.stages\.0\.stages\.8"):
        load_weights(carn_m(), bad)
    state = read_state_dict(weights_path)
    state["sub_mean.shifter.weight"] = state["sub_mean.shifter.weight"] * 2
    torch.save(state, bad)
    with pytest.raises(WeightsError, match="mean shift"):
        load_weights(carn_m(), bad)


def test_missing_and_corrupt_files_give_clear_errors(weights_path, tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(carn_m(), tmp_path / "nope.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights_path.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="corrupt"):
        load_weights(carn_m(), truncated)
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="corrupt"):
        load_weights(carn_m(), text)


# --------------------------------------------------------------------------- resolution


def test_explicit_path_wins_over_the_cache(weights_path, tmp_path):
    cached = tmp_path / OFFICIAL.filename
    cached.write_bytes(b"stale")
    assert resolve_weights_file(OFFICIAL, path=weights_path, cache_dir=tmp_path) == weights_path


def test_cache_is_used_without_downloading(weights_path, tmp_path):
    cached = tmp_path / OFFICIAL.filename
    shutil.copy(weights_path, cached)
    found = resolve_weights_file(
        OFFICIAL, cache_dir=tmp_path, url="http://127.0.0.1:9/unreachable", allow_download=True
    )
    assert found == cached


def test_download_verifies_the_checksum_and_lands_in_the_cache(weights_path, tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(weights_path, served / "carn_m.pth")
    cache = tmp_path / "cache"
    seen: list[int] = []
    with serve_directory(served) as base:
        found = resolve_weights_file(
            OFFICIAL,
            cache_dir=cache,
            url=f"{base}/carn_m.pth",
            progress=lambda done, total: seen.append(done),
        )
    assert found == cache / OFFICIAL.filename
    assert sha256_of(found) == OFFICIAL.sha256
    assert seen[-1] == weights_path.stat().st_size
    assert list(cache.iterdir()) == [found]  # no partial files left behind


def test_a_download_with_the_wrong_checksum_is_discarded(weights_path, tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    (served / "carn_m.pth").write_bytes(weights_path.read_bytes()[:-10] + b"0123456789")
    cache = tmp_path / "cache"
    with serve_directory(served) as base, pytest.raises(WeightsError, match="checksum mismatch"):
        download(f"{base}/carn_m.pth", OFFICIAL.sha256, cache / OFFICIAL.filename)
    assert list(cache.iterdir()) == []


@contextlib.contextmanager
def answering(reply: bytes, times: int = 1) -> Iterator[str]:
    """A loopback server that answers each of ``times`` connections with ``reply``, then hangs
    up; yields a URL on it."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(times):
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/carn_m.pth"
    finally:
        listener.close()
        thread.join(timeout=5)


@pytest.mark.parametrize("reply, reason", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + bytes(10),
     "incomplete download of http://127.0.0.1:{port}/carn_m.pth: 10 of 1000 bytes"),
    (b"SSH-2.0-OpenSSH_9.2\r\n",
     "(not a valid HTTP answer: BadStatusLine 'SSH-2.0-OpenSSH_9.2')"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
     "(not a valid HTTP answer: IncompleteRead"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n<htm", "4 of 5 bytes"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>", "checksum mismatch"),
])  # fmt: skip
def test_a_download_that_breaks_lets_the_bundled_weights_stand_in_with_the_reason(
    tmp_path, reply, reason
):
    """A cut-short body, a captive portal's page or a server that does not speak HTTP stopped
    the service or the command (a traceback for some): the bundled weights stand in."""
    notes: list[str] = []
    with answering(reply) as url:
        found = resolve_weights_file(OFFICIAL, cache_dir=tmp_path, url=url, fallback=BUNDLED,
                                     on_fallback=notes.append)  # fmt: skip
        port = url.split(":")[2].split("/")[0]
    assert found == BUNDLED.bundled_path
    (note,) = notes
    assert reason.format(port=port) in note and "bundled" in note
    assert list(tmp_path.iterdir()) == []  # nothing half-written left


def test_a_cached_file_that_does_not_match_is_put_aside_and_fetched_again(weights_path, tmp_path):
    """A cut-short cached file (or another one saved under its name) failed every run, and was
    never fetched again."""
    cache, served = tmp_path / "cache", tmp_path / "www"
    cache.mkdir()
    served.mkdir()
    cached = cache / OFFICIAL.filename
    cached.write_bytes(weights_path.read_bytes()[:100_000])
    shutil.copy(weights_path, served / "carn_m.pth")
    with serve_directory(served) as base:
        found = resolve_weights_file(OFFICIAL, cache_dir=cache, url=f"{base}/carn_m.pth")
    assert found == cached and sha256_of(cached) == OFFICIAL.sha256
    aside = cache / f"{OFFICIAL.filename}.mismatch"
    assert aside.stat().st_size == 100_000  # kept for a look, never used
    with pytest.raises(WeightsError, match="is a folder, not a file"):
        resolve_weights_file(OFFICIAL, path=tmp_path, cache_dir=cache)


def test_no_weights_anywhere_tells_the_user_what_to_do(tmp_path):
    with serve_directory(tmp_path) as base, pytest.raises(WeightsError) as info:
        resolve_weights_file(OFFICIAL, cache_dir=tmp_path / "cache", url=f"{base}/missing.pth")
    message = str(info.value)
    assert "404" in message and "--weights" in message and "CARN_WEIGHTS" in message
    assert OFFICIAL.url in message and OFFICIAL.sha256 in message
    with pytest.raises(WeightsError, match="downloading is disabled"):
        resolve_weights_file(OFFICIAL, cache_dir=tmp_path / "cache", allow_download=False)


def test_settings_read_carn_weights_and_the_prefixed_variables(tmp_path):
    env = {
        "CARN_WEIGHTS": "/w/a.pth",
        "CARN_STREAM_CACHE_DIR": str(tmp_path),
        "CARN_STREAM_ALLOW_DOWNLOAD": "false",
        "CARN_STREAM_DEVICE": "cpu",
    }
    s = Settings.from_env(env)
    assert s.weights == Path("/w/a.pth") and s.cache_dir == tmp_path
    assert s.allow_download is False and s.device == "cpu"
    assert Settings.from_env({**env, "CARN_STREAM_WEIGHTS": "/w/b.pth"}).weights == Path("/w/b.pth")
    assert Settings.from_env({"XDG_CACHE_HOME": "/c"}).cache_dir == Path("/c/carn-stream")
    with pytest.raises(ValueError, match="CARN_STREAM_ALLOW_DOWNLOAD"):
        Settings.from_env({"CARN_STREAM_ALLOW_DOWNLOAD": "maybe"})


def test_every_setting_is_documented_in_the_readme():
    from dataclasses import fields

    from tests.helpers import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    for f in fields(Settings):
        assert f"`CARN_STREAM_{f.name.upper()}`" in readme, f.name


# --------------------------------------------------------------------------- bundled weights

BUNDLED = CARNMWeights.BUNDLED.value


def test_bundled_weights_ship_in_the_package_small_checked_and_loadable():
    from carn_stream.model.weights import bundled_file

    path = bundled_file(BUNDLED)  # checks the registry's sha256
    assert path.stat().st_size <= 2_000_000
    model = carn_m()
    load_weights(model, CARNMWeights.BUNDLED)
    assert BUNDLED.meta["scales"] == (2, 3, 4)
    assert set(BUNDLED.meta["metrics"]) == {"Set5", "Set14"}


@pytest.mark.slow
def test_bundled_weights_measure_what_their_metadata_says(data_dir):
    from carn_stream.model.evaluation import evaluate
    from carn_stream.model.inference import upscale_rgb
    from carn_stream.pipeline.media.images import iter_images

    model = carn_m().eval()
    load_weights(model, CARNMWeights.BUNDLED)
    for scale in (2, 4):
        summary = evaluate(
            iter_images(data_dir / "images" / "Set5"),
            lambda im, s: upscale_rgb(model, im, s),
            scale,
        ).summary()
        psnr, ssim = BUNDLED.meta["metrics"]["Set5"][scale]
        assert summary["psnr"] == pytest.approx(psnr, abs=0.01)
        assert summary["ssim"] == pytest.approx(ssim, abs=0.0001)
        assert summary["psnr"] > summary["bicubic_psnr"]  # honest, but still worth shipping


def test_without_the_official_weights_the_bundled_ones_stand_in_with_a_warning(tmp_path):
    notes: list[str] = []
    found = resolve_weights_file(
        OFFICIAL, cache_dir=tmp_path, allow_download=False, fallback=BUNDLED,
        on_fallback=notes.append,
    )  # fmt: skip
    assert found == BUNDLED.bundled_path
    (note,) = notes
    assert "downloading is disabled" in note and "bundled" in note
    set5 = BUNDLED.meta["metrics"]["Set5"]
    assert f"{set5[2][0]:.2f}" in note and "37.62" in note  # its quality and the official one


def test_cli_upscales_with_the_bundled_weights_and_says_so(data_dir, tmp_path):
    import subprocess
    import sys

    from carn_stream.pipeline.media.images import read_rgb, write_png

    image = tmp_path / "in.png"
    write_png(image, read_rgb(data_dir / "images" / "Set5" / "bird.png")[:24, :24])
    env = {**os.environ, "CARN_WEIGHTS": "", "CARN_STREAM_ALLOW_DOWNLOAD": "0",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "carn_stream.cli", "upscale-image", str(image),
         str(tmp_path / "out.png"), "--scale", "2"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning: using the bundled CARN-M weights" in result.stderr
    assert read_rgb(tmp_path / "out.png").shape == (48, 48, 3)


def test_a_registry_member_builds_the_scales_its_weights_hold(tmp_path, monkeypatch):
    """carn_m(weights=<enum member>) reads the member's meta, not the default scales."""
    from enum import Enum

    from carn_stream.model.weights import Weights

    only_x2 = carn_m(scales=(2,))
    path = tmp_path / "x2.pth"
    torch.save(only_x2.state_dict(), path)
    entry = Weights(url="https://example.invalid/carn_m_x2.pth", sha256=sha256_of(path),
                    meta={"scales": (2,)})  # fmt: skip

    class X2Weights(Enum):
        ONLY_X2 = entry

    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(path, cache / entry.filename)
    model = carn_m(weights=X2Weights.ONLY_X2, cache_dir=cache)
    assert model.scales == (2,) and set(model.upsamplers) == {"x2"}
    with pytest.raises(WeightsError):  # the default three-scale network cannot take it
        load_weights(carn_m(), path)


def test_a_worker_serves_named_weights_written_again_from_their_new_file(
    weights_path, tmp_path
):
    """A long-running worker kept serving a video's tuned weights by their name after a tune
    wrote them again, until a restart."""
    import asyncio

    import numpy as np

    from carn_stream.loading import NamedWeightsLoader
    from carn_stream.pipeline.colour import ColourSpec
    from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(weights_path, models / "clip-x2.pth")
    settings = Settings(models_dir=models, data_dir=tmp_path / "data", precision="fp32")
    config = EngineConfig(device="cpu", precision="fp32")
    worker = InferenceWorker(Engine(carn_m(), config), NamedWeightsLoader(settings))
    frame = np.random.default_rng(0).integers(0, 256, (1, 24, 32, 3), dtype=np.uint8)

    async def upscaled() -> np.ndarray:
        result = await worker.submit([frame], ColourSpec("rgb"), 2, weights="clip-x2.pth")
        return result.y

    try:
        official = asyncio.run(upscaled())
        shutil.copy(BUNDLED.bundled_path, models / "clip-x2.pth")  # (a tune writes it again)
        again = asyncio.run(upscaled())
    finally:
        worker.close()
    bundled = carn_m()
    load_weights(bundled, BUNDLED.bundled_path)
    expected = Engine(bundled.eval(), config).upscale([frame], ColourSpec("rgb"), 2)[0]
    assert not np.array_equal(again, official) and np.array_equal(again, expected)

