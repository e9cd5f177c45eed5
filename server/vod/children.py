"""The fine-tune and title-model commands a video's ingest runs as child processes: at a lower
CPU priority, their output in a log, and never outliving the service (a child of a service
killed outright would go on training into a folder whose record says it failed)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import signal
import sys
from pathlib import Path

#: prctl(2) option: the signal a process gets when its parent dies
PR_SET_PDEATHSIG = 1
# prctl from the process's own symbols (libc among them), looked up here in the parent: a
# child between fork and exec only calls it. (find_library would run ldconfig at import.)
_PRCTL = ctypes.CDLL(None).prctl if sys.platform == "linux" else None


async def run_child(command: list[str], log_path: Path) -> None:
    """Run ``command`` at a lower CPU priority, its output in ``log_path``; killed when the
    caller is cancelled (the video was deleted) or the service dies; its last line is the
    error when it fails."""
    parent = os.getpid()
    with open(log_path, "wb") as log_file:
        child = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            preexec_fn=lambda: _prepare_child(parent),
        )  # fmt: skip
        try:
            code = await child.wait()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    if code != 0:
        raise RuntimeError(last_line(log_path) or f"exit status {code}")


def _prepare_child(parent: int) -> None:
    """In the child, before it runs the command: yield the CPU to playback and live sessions,
    and be killed when the service's process ends (Linux; elsewhere deletion still kills)."""
    os.nice(10)
    if _PRCTL is not None:
        refused = _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL) != 0
        if refused or os.getppid() != parent:  # (or the service died before the call)
            os._exit(1)


def last_line(path: Path) -> str:
    """The log's last line, without the command's own error prefix ('' without one)."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return re.sub(r"^carn-stream [a-z-]+: error: ", "", lines[-1]) if lines else ""
