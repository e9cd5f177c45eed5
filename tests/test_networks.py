"""Network shapes, scale handling and the paper's ablation variants."""

from __future__ import annotations

import pytest
import torch

from carn_stream.model import CARN, carn, carn_m, carn_ng, carn_nl, resnet_baseline
from carn_stream.model.complexity import ParameterCount


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(8, 8), (7, 13), (1, 1), (15, 4)])
def test_multiscale_carn_m_output_is_scale_times_input_for_any_size(scale, size):
    model = carn_m().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size), scale)
    assert out.shape == (2, 3, size[0] * scale, size[1] * scale)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_single_scale_network_holds_one_upsampler_and_needs_no_scale_argument(scale):
    model = carn(scales=(scale,)).eval()
    assert list(model.upsamplers) == [f"x{scale}"]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 5, 9)).shape == (1, 3, 5 * scale, 9 * scale)
    other = 2 if scale != 2 else 3
    with pytest.raises(ValueError, match="not supported"):
        model(torch.rand(1, 3, 4, 4), other)


def test_multiscale_network_refuses_a_call_without_scale():
    with pytest.raises(ValueError, match="pass scale"):
        carn_m()(torch.rand(1, 3, 4, 4))


def test_unsupported_scale_is_refused_at_build_time():
    with pytest.raises(ValueError, match="subset"):
        CARN(scales=(2, 8))


VARIANTS = {
    "carn": lambda: carn(),
    "carn_m": lambda: carn_m(),
    "carn_nl": lambda: carn_nl(),
    "carn_ng": lambda: carn_ng(),
    "resnet_baseline": lambda: resnet_baseline(),
    "carn_m_group1": lambda: carn_m(group=1),
    "carn_m_group2": lambda: carn_m(group=2),
    "carn_m_group8": lambda: carn_m(group=8),
    "carn_m_group64": lambda: carn_m(group=64),
    "carn_m_not_recursive": lambda: carn_m(recursive=False),
    "carn_m_nl_ng": lambda: carn_m(local_cascade=False, global_cascade=False),
    "carn_small": lambda: carn(channels=16, blocks=2, units=2, scales=(3,)),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_runs_forward_and_backward(name):
    model = VARIANTS[name]()
    scale = model.scales[-1]
    x = torch.rand(2, 3, 6, 5)
    out = model(x, scale)
    assert out.shape == (2, 3, 6 * scale, 5 * scale)
    out.abs().mean().backward()
    grads = [p.grad for p in model.parameters()]
    used = [g for g in grads if g is not None and g.abs().sum() > 0]
    # Every parameter except the unused upsampler branches gets a gradient.
    branch_params = sum(
        1 for s in model.scales if s != scale for _ in model.upsamplers[f"x{s}"].parameters()
    )
    assert len(used) == len(grads) - branch_params


def test_ablations_remove_exactly_the_cascading_1x1_convs():
    full = ParameterCount.of(carn()).total
    # Each 1x1 fusion after step i merges (i + 2) * 64 channels into 64: weights + biases.
    fusion = sum((i + 2) * 64 * 64 + 64 for i in range(3))
    assert ParameterCount.of(carn_nl()).total == full - 3 * fusion  # three blocks' local ones
    assert ParameterCount.of(carn_ng()).total == full - fusion  # the global ones
    assert ParameterCount.of(resnet_baseline()).total == full - 4 * fusion


def test_recursive_block_shares_one_unit_and_group_size_divides_the_3x3_convs():
    shared, separate = carn_m(), carn_m(recursive=False)
    unit = sum(p.numel() for p in shared.body.stages[0].stages[0].parameters())
    assert len(shared.body.stages[0].stages) == 1
    assert len(separate.body.stages[0].stages) == 3
    diff = ParameterCount.of(separate).total - ParameterCount.of(shared).total
    assert diff == 3 * 2 * unit  # three blocks, two extra units each
    conv = carn_m(group=8).body.stages[0].stages[0].body[0]
    assert conv.groups == 8 and conv.weight.shape == (64, 8, 3, 3)
    with pytest.raises(ValueError, match="does not divide"):
        carn_m(group=5)
