"""Whether the service can take another job now: disk space, queue length, a writable data
folder."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from fastapi import HTTPException, status

from carn_stream.server.disk import disk_space
from carn_stream.server.jobs.store import JobStore
from carn_stream.settings import Settings


def check_disk(settings: Settings) -> None:
    """Refuse new work (a job, a video) with 507 when the data folder's disk is below its
    floor."""
    space = disk_space(settings.data_dir, settings.min_free_disk_bytes)
    if space.shortfall():
        raise HTTPException(
            status.HTTP_507_INSUFFICIENT_STORAGE,
            f"the server is low on disk space ({space.describe()}); try again later",
        )


def check_admission(settings: Settings, store: JobStore) -> None:
    """Refuse a new job with 507 when the data folder's disk is below its floor, with 503
    when the queue is full."""
    check_disk(settings)
    queued = store.count_by_state()["queued"]
    if queued >= settings.max_queued_jobs:
        raise queue_full(queued)


def queue_full(queued: int) -> HTTPException:
    """The 503 of a full queue (checked first, and again as the job is stored)."""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        f"the job queue is full ({queued} jobs waiting); try again later",
        headers={"Retry-After": "30"},
    )


def data_dir_writable(folder: Path) -> bool:
    """Create, write, fsync and delete a small file in ``folder``: the disk really takes
    writes (not full, not read-only)."""
    probe = folder / f".ready-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ready" * 820)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
