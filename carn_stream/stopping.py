"""Run a command's pipeline so that Ctrl-C or SIGTERM stops it promptly and cleanly.

A signal cancels the pipeline's task: its stages stop, both containers are closed and the
partial output is removed (the pipeline's own cleanup). The batch the model is computing
cannot be interrupted (a PyTorch call holds its thread until it returns, up to many seconds
for a large frame on a CPU), and its result is of no use any more, so the process then ends
at once with exit code 130 instead of waiting for that thread. Ending through the
interpreter's normal shutdown while that thread still computes is what aborts the process
(``terminate called without an active exception``: PyTorch's thread pool is destroyed while
in use), so the exit skips it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EXIT_INTERRUPTED = 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _say(text: str) -> None:
    start = "\n" if sys.stderr.isatty() else ""  # end a progress line redrawn in place
    sys.stderr.write(f"{start}carn-stream: {text}\n")
    sys.stderr.flush()


def exit_now(code: int = EXIT_INTERRUPTED) -> None:
    """End the process without waiting for worker threads or running finalizers."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_stoppable(main: Coroutine[Any, Any, T], doing: str | Callable[[], str]) -> T:
    """``asyncio.run(main)``; on SIGINT/SIGTERM say ``stopping: <doing>`` (a callable: what it
    returns then), cancel ``main``, let its cleanup finish, then exit with 130. A second signal
    exits at once."""
    stopped = False

    async def runner() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            nonlocal stopped
            if stopped:
                _say(f"{signal.Signals(signum).name} again: exiting without cleaning up")
                exit_now()
            stopped = True
            _say(f"stopping: {doing() if callable(doing) else doing}")
            task.cancel()

        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            return await main
        finally:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    try:
        return asyncio.run(runner())
    except BaseException:
        if not stopped:
            raise
    _say("stopped")
    exit_now()
    raise AssertionError("unreachable")
