"""Parameter and Mult-Add counts against the paper's Table 1."""

from __future__ import annotations

import json

import pytest

from carn_stream.cli import main
from carn_stream.model import carn, carn_m
from carn_stream.model.complexity import (
    PAPER_TABLE_1,
    ParameterCount,
    describe_published_models,
    mult_adds,
)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name,build", [("CARN", carn), ("CARN-M", carn_m)])
def test_mult_adds_match_table_1_to_the_printed_digit(name, build, scale):
    measured = mult_adds(build(), scale)
    assert round(measured / 1e8) == round(PAPER_TABLE_1[name]["mult_adds"][scale] / 1e8)


def test_parameter_counts_match_table_1_in_the_paper_convention():
    # CARN: 1,591,939 weights + biases -> "1,592K". CARN-M: 412,032 weights (414,787 with
    # biases) -> "412K". The paper mixed the two conventions; docs/MODEL.md says so.
    assert ParameterCount.of(carn()) == ParameterCount(total=1_591_939, weights_only=1_588_608)
    assert ParameterCount.of(carn_m()) == ParameterCount(total=414_787, weights_only=412_032)
    assert round(ParameterCount.of(carn()).total, -3) == PAPER_TABLE_1["CARN"]["params"]
    assert round(ParameterCount.of(carn_m()).weights_only, -3) == PAPER_TABLE_1["CARN-M"]["params"]


def test_counting_does_not_touch_the_models_weights():
    model = carn_m()
    before = model.entry.weight.clone()
    mult_adds(model, 4)
    assert model.entry.weight.device.type == "cpu"
    assert model.entry.weight.equal(before)


def test_stats_json_lists_both_models_with_every_scale(capsys):
    assert main(["stats", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == describe_published_models()
    by_name = {r["model"]: r for r in rows}
    assert by_name["CARN-M"]["params"] == 414_787
    assert set(by_name["CARN-M"]["mult_adds"]) == {"2", "3", "4"}
    assert round(by_name["CARN-M"]["mult_adds"]["2"] / 1e9, 1) == 91.2


def test_stats_table_prints_our_counts_beside_the_papers(capsys):
    assert main(["stats"]) == 0
    out = capsys.readouterr().out
    assert "414,787" in out and "412,032" in out and "91.2G" in out and "222.8G" in out
