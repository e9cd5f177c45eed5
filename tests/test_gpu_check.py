"""The GPU machine's one call, run on this CPU at its small sizes: every section of it works
before a GPU is lent (a lent machine's minutes are too few to debug it there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import DATA_DIR, REPO_ROOT, official_weights_path

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_every_section_on_a_cpu(tmp_path):
    env = {**os.environ, "CARN_STREAM_TEST_DATA": str(DATA_DIR),
           "CARN_WEIGHTS": str(official_weights_path()), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--out", str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    sections = {row["section"] for row in rows}
    assert sections == {"env", "correctness", "model", "pipeline", "service", "live", "title"}
    assert not [row for row in rows if row["ok"] is False], rows
    measured = {row["what"]: row["value"] for row in rows}
    assert measured["HLS job 64x36 x4: every frame, audio kept"] == "True, True"
    assert float(measured["mean batch size, in-process executor"]) == 1.0  # CPU: batches of 1
    assert float(measured["live 64x48 x2 (camera 30 fps): fps received"]) > 5
    forms = "eager forms 64x36 x2 fp32 batch 2: fps network / deployed / deployed-concat"
    assert len(measured[forms].split(" / ")) == 3
    assert all(float(fps) > 0 for fps in measured[forms].split(" / "))
    # the summary is the last output, so a run cut short still ends with what it measured
    gains = [value for what, value in measured.items() if "held-out gain" in what]
    assert len(gains) == 2 and all(abs(float(g)) < 5 for g in gains), measured
    assert result.stdout.rstrip().splitlines()[-1].startswith("| title | seconds |")
    assert (tmp_path / "summary.md").read_text().count("\n") == len(rows) + 2
