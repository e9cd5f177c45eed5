"""The evaluation protocol and the official CARN-M's scores against the paper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from carn_stream.model.evaluation import crop_to_multiple, degrade, evaluate
from carn_stream.model.imresize import bicubic_uint8, imresize, resize_matrix
from carn_stream.model.inference import upscale_rgb
from carn_stream.model.metrics import psnr, rgb_to_y, ssim
from carn_stream.model.weights import PAPER_CARN_M, CARNMWeights
from carn_stream.pipeline.media.images import iter_images


def test_luma_follows_matlab_rgb2ycbcr_on_8_bit_images():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    assert rgb_to_y(rgb).tolist() == [[16, 235, 81, 145, 41]]


def test_psnr_and_ssim_known_values():
    a = np.full((32, 32), 100.0)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 5) == pytest.approx(10 * math.log10(255**2 / 25))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 40)).astype(np.float64)
    assert ssim(img, img) == pytest.approx(1.0)
    assert ssim(img, 255 - img) < 0  # anti-correlated structure


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3, 4])
def test_resize_weights_sum_to_one_and_keep_constants(scale):
    m = resize_matrix(24, math.ceil(24 * scale), scale)
    assert np.allclose(m.sum(axis=1), 1.0)
    flat = np.full((24, 24, 3), 77, np.uint8)
    assert (bicubic_uint8(flat, scale=scale) == 77).all()


def test_bicubic_upscaling_reproduces_a_linear_ramp_away_from_the_borders():
    ramp = torch.arange(16, dtype=torch.float64).repeat(16, 1)
    up = imresize(ramp, scale=2.0)
    # cubic convolution (a = -0.5) is exact on linear functions: x_out = (x + 0.5)/2 - 0.5
    expected = (torch.arange(32, dtype=torch.float64) + 0.5) / 2 - 0.5
    assert torch.allclose(up[8, 4:-4], expected[4:-4])


def test_downscaling_is_antialiased():
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: pure Nyquist content
    small = bicubic_uint8(stripes, scale=0.5)
    assert small.shape == (16, 16, 3)
    assert np.ptp(small[4:-4, 4:-4]) <= 2  # averaged to grey, no aliasing


def test_protocol_crops_hr_to_a_multiple_of_the_scale():
    hr = np.zeros((31, 29, 3), np.uint8)
    assert crop_to_multiple(hr, 3).shape == (30, 27, 3)
    assert degrade(crop_to_multiple(hr, 3), 3).shape == (10, 9, 3)


# Published bicubic Set5 figures under the standard protocol (PSNR on Y): 33.66 / 30.39 /
# 28.42. They check the degradation, the luma and the shave independently of any network.
@pytest.mark.parametrize("scale,expected", [(2, 33.66), (3, 30.39), (4, 28.42)])
def test_bicubic_baseline_on_set5_matches_the_published_figures(data_dir, scale, expected):
    report = evaluate(iter_images(data_dir / "images" / "Set5"), nearest_upscaler, scale)
    assert report.summary()["bicubic_psnr"] == pytest.approx(expected, abs=0.03)


# The upscaler under test is scored apart from the bicubic baseline: pixel repetition scores
# 30.84 / 27.92 / 26.25 dB on Set5 (measured), 2.2-2.8 dB below bicubic.
@pytest.mark.parametrize("scale,expected", [(2, 30.84), (3, 27.92), (4, 26.25)])
def test_the_upscaler_under_test_is_scored_apart_from_bicubic(data_dir, scale, expected):
    report = evaluate(iter_images(data_dir / "images" / "Set5"), nearest_upscaler, scale)
    assert report.summary()["psnr"] == pytest.approx(expected, abs=0.01)


def nearest_upscaler(lr: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)


def _check_against_paper(model, data_dir, dataset, scale):
    report = evaluate(
        iter_images(data_dir / "images" / dataset), lambda lr, s: upscale_rgb(model, lr, s), scale
    )
    summary = report.summary()
    paper_psnr, paper_ssim = PAPER_CARN_M[dataset][scale]
    assert abs(summary["psnr"] - paper_psnr) <= 0.15, summary
    assert abs(summary["ssim"] - paper_ssim) <= 0.005, summary
    assert summary["psnr"] > summary["bicubic_psnr"] + 2.0
    # The registry's metadata (and the docs generated from it) hold what we really measure.
    recorded_psnr, recorded_ssim = CARNMWeights.OFFICIAL.value.meta["metrics"][dataset][scale]
    assert summary["psnr"] == pytest.approx(recorded_psnr, abs=0.006)
    assert summary["ssim"] == pytest.approx(recorded_ssim, abs=0.00006)
    return summary


# Measured here with the official weights (docs/MODEL.md): Set5 37.62/0.9586, 34.03/0.9238,
# 31.86/0.8899; Set14 33.28/0.9145, 30.09/0.8370, 28.40/0.7764.
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_carn_m_reproduces_the_paper_on_set5(official_carn_m, data_dir, scale):
    _check_against_paper(official_carn_m, data_dir, "Set5", scale)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_carn_m_reproduces_the_paper_on_set14(official_carn_m, data_dir, scale):
    _check_against_paper(official_carn_m, data_dir, "Set14", scale)


def test_docs_bundled_weights_table_is_generated_from_the_registry():
    from carn_stream.model.report import bundled_table
    from tests.helpers import REPO_ROOT

    assert bundled_table() in (REPO_ROOT / "docs" / "TRAINING.md").read_text()


def test_docs_metrics_table_is_generated_from_the_registry():
    from carn_stream.model.report import metrics_table
    from tests.helpers import REPO_ROOT

    assert metrics_table() in (REPO_ROOT / "docs" / "MODEL.md").read_text()
