"""The serve/upscale launcher that preloads jemalloc (the process itself cannot be replaced
inside pytest, so ``os.execve`` is captured)."""

from __future__ import annotations

import os
import sys

import pytest

from carn_stream import allocator


@pytest.fixture()
def captured_exec(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append((path, args, env)))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("MALLOC_CONF", raising=False)
    return calls


def test_jemalloc_relaunches_the_command_with_it_preloaded(monkeypatch, captured_exec):
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: "/opt/lib/libjemalloc.so.2")
    allocator.relaunch_with_jemalloc("jemalloc", ["serve", "--port", "9"])
    ((path, args, env),) = captured_exec
    assert path == sys.executable and args[1:] == ["-m", "carn_stream.cli", "serve", "--port", "9"]
    assert env["LD_PRELOAD"] == "/opt/lib/libjemalloc.so.2"
    assert "thp:always" in env["MALLOC_CONF"]


def test_no_relaunch_for_glibc_or_when_already_loaded(monkeypatch, captured_exec):
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: "/x/libjemalloc.so.2")
    allocator.relaunch_with_jemalloc("glibc", ["serve"])
    monkeypatch.setenv("LD_PRELOAD", "/x/libjemalloc.so.2")
    allocator.relaunch_with_jemalloc("jemalloc", ["serve"])
    assert captured_exec == []
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: None)
    with pytest.raises(RuntimeError, match="apt-get install libjemalloc2"):
        allocator.relaunch_with_jemalloc("jemalloc", ["serve"])
    with pytest.raises(ValueError, match="allocator must be one of"):
        allocator.relaunch_with_jemalloc("auto", ["serve"])
