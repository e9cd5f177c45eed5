"""The deployed form of CARN (exit before the last shuffle, cascades without concatenation):
the same function, and what the int8 recipe keeps in float of it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from carn_stream.model.deployed import SplitCascade, deployed, exit_before_shuffle
from carn_stream.model.networks import carn, carn_m, carn_ng, resnet_baseline
from carn_stream.pipeline.engine import cpu
from carn_stream.pipeline.engine.backends import TorchBackend, eager_layout
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, unavailable_reason
from carn_stream.pipeline.engine.onnx_models import export_onnx


def _random(model: nn.Module) -> nn.Module:
    """``model`` with weights far from zero, so a misplaced tap shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_deployed_official_carn_m_computes_the_network(official_carn_m, scale):
    x = torch.rand(2, 3, 23, 37, generator=torch.Generator().manual_seed(1))  # odd sizes
    with torch.no_grad():
        want = official_carn_m(x, scale)
        got = deployed(official_carn_m, scale)(x)
    assert got.shape == want.shape == (2, 3, 23 * scale, 37 * scale)
    assert torch.allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("make", [carn, carn_m, resnet_baseline], ids=lambda f: f.__name__)
def test_deployed_form_holds_for_every_variant(make):
    model = _random(make(scales=(2, 3, 4), channels=16))
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for scale in (2, 3, 4):
            want = model(x, scale)
            error = (deployed(model, scale)(x) - want).abs().max()
            assert error <= 1e-5 * want.abs().max()  # float rounding, at any magnitude


@pytest.mark.parametrize("form", ["deployed", "deployed-concat"])
def test_eager_backend_in_each_form_computes_the_network(official_carn_m, form):
    x = torch.rand(1, 3, 23, 37, generator=torch.Generator().manual_seed(5))
    cpu_ = torch.device("cpu")
    network = TorchBackend(official_carn_m, cpu_, torch.float32, False)
    made = TorchBackend(official_carn_m, cpu_, torch.float32, True, form)
    with torch.inference_mode():
        for scale in (2, 3, 4):
            assert torch.allclose(made(x, scale), network(x, scale), atol=2e-5)
        with pytest.raises(ValueError, match="scale 5 not supported"):
            made(x, 5)
    with pytest.raises(ValueError, match="form must be one of"):
        TorchBackend(official_carn_m, cpu_, torch.float32, True, "fused")


def test_bf16_forms_keep_the_image_facing_parts_fp32_and_only_split_sums_round(
    official_carn_m,
):
    """In bf16 the deployed form's sums are each rounded to bf16; the form that keeps the
    concatenations sums each cascade in one conv. (The engine's bf16 runs the network as
    trained: neither form ran faster, docs/PERFORMANCE.md.)"""
    x = torch.rand(1, 3, 36, 44, generator=torch.Generator().manual_seed(6))
    cpu_ = torch.device("cpu")
    assert eager_layout(cpu_, "bf16") == (True, "network")
    mixed = TorchBackend(official_carn_m, cpu_, torch.bfloat16, True)  # CARN's own forward
    concat = TorchBackend(official_carn_m, cpu_, torch.bfloat16, True, "deployed-concat")
    split = TorchBackend(official_carn_m, cpu_, torch.bfloat16, True, "deployed")
    made = concat.forms[2]
    assert made.body.fusions[0][0].weight.dtype == made.upsampler[0].weight.dtype == torch.bfloat16
    assert made.entry.weight.dtype == made.exit.weight.dtype == torch.float32
    with torch.inference_mode():
        want = mixed(x, 2)
        assert (concat(x, 2) - want).abs().max() < 1e-3
        assert (split(x, 2) - want).abs().max() > 3e-3  # measured 1.5e-2 at 176x144
    assert next(official_carn_m.parameters()).dtype == torch.float32  # the shared one untouched


def test_fp32_engine_on_a_cpu_runs_the_deployed_form_at_every_scale(official_carn_m):
    backend = Engine(official_carn_m, EngineConfig(device="cpu", precision="fp32")).backend
    assert (backend.form, backend.model) == ("deployed", None)
    assert sorted(backend.forms) == [2, 3, 4]
    assert all(isinstance(made.body, SplitCascade) for made in backend.forms.values())


@pytest.mark.parametrize("r", [2, 3])
def test_exit_moved_before_the_shuffle_gives_the_same_image(r):
    conv = _random(nn.Conv2d(8, 3, 3, padding=1))
    x = torch.rand(1, 8 * r * r, 5, 7, generator=torch.Generator().manual_seed(3))
    moved = exit_before_shuffle(conv, r)
    assert (moved.in_channels, moved.out_channels) == (8 * r * r, 3 * r * r)
    with torch.no_grad():
        want = conv(nn.functional.pixel_shuffle(x, r))
        got = nn.functional.pixel_shuffle(moved(x), r)
    assert torch.allclose(got, want, atol=1e-5)


def test_deployed_form_is_a_copy_in_the_networks_dtype():
    model = _random(carn_m(scales=(2,), channels=16)).double().train()
    form = deployed(model, 2)
    assert {p.dtype for p in form.parameters()} == {torch.float64}
    assert model.training and model.entry.training  # the caller's network left as it was
    form.float()
    assert model.entry.weight.dtype == torch.float64
    x = torch.rand(1, 3, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(form.double()(x), model.eval()(x), atol=1e-9)


def test_only_a_plain_3x3_exit_moves():
    with pytest.raises(ValueError, match="3x3"):
        exit_before_shuffle(nn.Conv2d(8, 3, 1), 2)
    with pytest.raises(ValueError, match="stride 1"):
        exit_before_shuffle(nn.Conv2d(8, 3, 3, padding=1, padding_mode="reflect"), 2)
    with pytest.raises(ValueError, match="scale 3 not supported"):
        deployed(carn_m(scales=(2,)), 3)


def test_export_has_no_concatenation_and_shuffles_only_the_picture(official_carn_m, tmp_path):
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "x4.onnx"
    export_onnx(official_carn_m, 4, path)
    nodes = onnx.load(str(path)).graph.node
    assert not [n for n in nodes if n.op_type == "Concat"]
    shuffles = [n.name for n in nodes if n.op_type == "DepthToSpace"]
    # x4: the upsampler's first shuffle (64 channels), then the picture's (12 -> 3 channels)
    assert shuffles == ["/upsampler/upsampler.2/DepthToSpace", "/shuffle/DepthToSpace"]


@pytest.mark.skipif(unavailable_reason("int8", torch.device("cpu")) is not None, reason="no int8")
@pytest.mark.parametrize("scale", [2, 4])
def test_int8_keeps_the_picture_and_the_sensitive_parts_in_float(official_carn_m, scale, tmp_path):
    from carn_stream.pipeline.engine.int8 import _nodes, float_nodes

    path = tmp_path / "float.onnx"
    export_onnx(official_carn_m, scale, path)
    keep = float_nodes(path, scale)
    names = {name for _, name in _nodes(path)}
    assert set(keep) <= names
    assert keep[0] == "/entry/Conv" and "/shuffle/DepthToSpace" in keep
    last_fusion = [n for n in keep if n.startswith("/body/fusions.2/parts.")]
    assert len(last_fusion) == 4  # the global cascade's last fusion reads four parts
    assert any(n.startswith("/body/stages.0/fusions.0/Add") for n in keep)  # partial sums
    assert "/exit/Conv" not in keep  # int8: as cheap in quality as the body's convs
    assert any(n.startswith("/upsampler/") for n in keep) == (scale == 2)


@pytest.mark.skipif(unavailable_reason("int8", torch.device("cpu")) is not None, reason="no int8")
def test_int8_float_parts_of_a_network_without_global_cascade(tmp_path):
    from carn_stream.pipeline.engine.int8 import float_nodes

    path = tmp_path / "ng.onnx"
    export_onnx(_random(carn_ng(scales=(4,), channels=16, efficient=True, group=4)), 4, path)
    keep = float_nodes(path, 4)
    # the entry, the conv that feeds the upsampler (the last block's last fusion part)
    assert keep[0] == "/entry/Conv" and keep[1].startswith("/body/stages.2/fusions.2/parts.")
    assert keep[-1] == "/shuffle/DepthToSpace"


def test_an_isa_cap_limits_the_features_the_modes_rely_on(monkeypatch):
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: "flags\t: fpu avx2 avx512_vnni amx_bf16\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert cpu.cpu_features() == ("avx2", "avx512_vnni", "amx_bf16")
    assert cpu.cpu_has_native_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert cpu.isa_cap() == "AVX2"
    assert cpu.cpu_features() == ("avx2",)
    assert not cpu.cpu_has_native_bf16()
    assert "no bf16" in unavailable_reason("ov-bf16", torch.device("cpu"))
    # ov-fp16's own check applies under a cap only (elsewhere OpenVINO's capabilities decide)
    assert "no fp16" in unavailable_reason("ov-fp16", torch.device("cpu"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert cpu.cpu_features() == ("avx2", "avx512_vnni")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert cpu.cpu_features() == ("avx2", "avx512_vnni", "amx_bf16")
