"""A video's fine-tune runs as a child process that never outlives the service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import asyncio, sys
from pathlib import Path
from carn_stream.server.vod.children import run_child
sleeper = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"]
asyncio.run(run_child(sleeper, Path(sys.argv[1])))
"""


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_a_childs_work_ends_when_the_service_is_killed(tmp_path):
    """Before, a `tune` child of a service killed with SIGKILL went on training (re-parented,
    at nice 10) and wrote its weights into a video whose record said it had failed."""
    log = tmp_path / "tune.log"
    service = subprocess.Popen([sys.executable, "-c", PARENT, str(log)])
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(log.read_text())
        assert alive(child)
        assert os.getpriority(os.PRIO_PROCESS, child) >= 10  # it yields the CPU
        service.send_signal(signal.SIGKILL)
        service.wait(10)
        deadline = time.monotonic() + 5
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        service.kill()
        service.wait(10)


def test_a_failed_childs_last_line_is_its_error(tmp_path):
    import asyncio

    from carn_stream.server.vod.children import run_child

    exit_with = "import sys; sys.exit('carn-stream tune: error: too few frames')"
    with pytest.raises(RuntimeError, match=r"^too few frames$"):
        asyncio.run(run_child([sys.executable, "-c", exit_with], tmp_path / "log"))
