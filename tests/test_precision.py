"""Precision modes of the inference engine: what each costs in quality, and how they are chosen."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from carn_stream.pipeline import infer
from carn_stream.pipeline.colour import ColourSpec
from carn_stream.pipeline.infer import Engine, EngineConfig, default_precision
from tests.media import decode_rgb

RGB, OUT = ColourSpec("rgb"), ColourSpec("yuv", bits=8, matrix=1)


def luma_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def frames(data_dir) -> list[np.ndarray]:
    """Three real frames of the carphone clip (176x144), cropped to 96x80 to keep it quick."""
    return [f[32:112, 40:136] for f in decode_rgb(data_dir / "video" / "carphone_pristine.mp4", 3)]


def test_auto_is_fp32_on_a_cpu_without_native_bf16_and_bf16_with_it(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(infer, "cpu_has_native_bf16", lambda: False)
    assert default_precision(cpu) == "fp32"
    monkeypatch.setattr(infer, "cpu_has_native_bf16", lambda: True)
    assert default_precision(cpu) == "bf16"
    assert default_precision(cuda) == "fp16"


def test_impossible_modes_are_refused_with_a_reason(official_carn_m):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Engine(official_carn_m, EngineConfig(device="cpu", precision="fp16"))
    with pytest.raises(ValueError, match="precision must be one of"):
        Engine(official_carn_m, EngineConfig(device="cpu", precision="int4"))


def test_bf16_stays_close_to_fp32(official_carn_m, frames):
    fp32 = Engine(official_carn_m, EngineConfig(device="cpu", precision="fp32"))
    bf16 = Engine(official_carn_m, EngineConfig(device="cpu", precision="bf16"))
    a = fp32.upscale([frames[0][None]], RGB, 2, OUT)[0]
    b = bf16.upscale([frames[0][None]], RGB, 2, OUT)[0]
    # Measured 60.9 dB on carphone at x2 (54.6 dB with the image-facing convs in bf16 too).
    assert luma_psnr(a, b) > 55
    assert bf16.runner.channels_last
    assert bf16.runner.model.body.fusions[0][0].weight.dtype == torch.bfloat16
    assert bf16.runner.model.exit.weight.dtype == torch.float32
    assert next(official_carn_m.parameters()).dtype == torch.float32  # the shared one untouched


@pytest.mark.slow
def test_int8_quantizes_once_per_weights_and_calibration_and_stays_close(
    official_carn_m, frames, tmp_path
):
    fp32 = Engine(official_carn_m, EngineConfig(device="cpu", precision="fp32"))
    config = EngineConfig(device="cpu", precision="int8", cache_dir=tmp_path)
    int8 = Engine(official_carn_m, config)
    int8.calibrate(2, frames[:2], "carphone-test")
    cached = sorted((tmp_path / "int8").glob("*.onnx"))
    assert len(cached) == 1 and "-x2-carphone-test-" in cached[0].name
    a = fp32.upscale([frames[2][None]], RGB, 2, OUT)[0]
    b = int8.upscale([frames[2][None]], RGB, 2, OUT)[0]
    # Measured 49.4 dB at 176x144 x2 (entry and concat-fed convs kept in float).
    assert 42 < luma_psnr(a, b) < 80
    assert not np.array_equal(a, b)  # really another arithmetic
    # A second engine for the same weights and calibration reuses the cached model.
    stamp = cached[0].stat().st_mtime_ns
    again = Engine(official_carn_m, config)
    again.calibrate(2, frames[:2], "carphone-test")
    assert cached[0].stat().st_mtime_ns == stamp
    assert np.array_equal(again.upscale([frames[2][None]], RGB, 2, OUT)[0], b)
    # Another input size runs the same quantized model, compiled for that shape.
    small = again.upscale([frames[2][None, :48, :64]], RGB, 2, OUT)[0]
    assert small.shape == (1, 96, 128)
    assert luma_psnr(fp32.upscale([frames[2][None, :48, :64]], RGB, 2, OUT)[0], small) > 42


def test_engine_rgb_path_matches_the_evaluation_upscaler(official_carn_m, frames):
    from carn_stream.model.inference import upscale_rgb

    engine = Engine(official_carn_m, EngineConfig(device="cpu", precision="fp32"))
    ours = engine.upscale_rgb(frames[0], 3).astype(int)
    reference = upscale_rgb(official_carn_m, frames[0], 3).astype(int)
    # Same network and arithmetic; only the uint8 -> float scaling differs in the last bit.
    assert np.abs(ours - reference).max() <= 1
    assert np.mean(ours == reference) > 0.999


def test_eval_reports_each_precision(tmp_path, data_dir, weights_path, capsys):
    from carn_stream.cli import main
    from carn_stream.pipeline.images import read_rgb, write_png

    folder = tmp_path / "hr"
    folder.mkdir()
    write_png(
        folder / "bird.png", read_rgb(data_dir / "images" / "Set5" / "bird.png")[80:176, 80:176]
    )
    code = main(["eval", "--weights", str(weights_path), "--data", str(folder), "--scale", "2",
                 "--precision", "fp32,bf16", "--json"])  # fmt: skip
    assert code == 0
    fp32, bf16 = json.loads(capsys.readouterr().out)
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    assert abs(fp32["psnr"] - bf16["psnr"]) < 0.05
    assert fp32["psnr"] > fp32["bicubic_psnr"] + 1


def test_eval_int8_needs_a_calibration_source(tmp_path, weights_path, capsys):
    from carn_stream.cli import main

    (tmp_path / "hr").mkdir()
    code = main(["eval", "--weights", str(weights_path), "--data", str(tmp_path / "hr"),
                 "--scale", "2", "--precision", "int8"])  # fmt: skip
    assert code == 1
    assert "needs --calibration" in capsys.readouterr().err
