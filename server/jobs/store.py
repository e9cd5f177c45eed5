"""Persistent job state in SQLite (WAL): survives restarts, including ``kill -9``.

A job's plan and each of its segments are recorded too: a segment is ``done`` only once its
file is published and its size recorded, so a restarted service continues a job from the
segments that are not.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from carn_stream.pipeline.execution.executors import SegmentResult
from carn_stream.pipeline.media.segments import SegmentPlan
from carn_stream.server.database import Database
from carn_stream.server.jobs.params import JobParams

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
#: Jobs that ended without success: none of their media is served.
ENDED_WITHOUT_OUTPUT = ("failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    url TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER NOT NULL DEFAULT 0,
    fps REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS segments (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    start REAL NOT NULL,
    duration REAL NOT NULL,
    frames INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    seconds REAL,
    bytes INTEGER,
    rotation INTEGER NOT NULL DEFAULT 0,
    node TEXT,
    error TEXT,
    PRIMARY KEY (job_id, idx)
);
"""
#: Columns added after the first release (added to older databases at open).
_ADDED_COLUMNS = {"plan": "TEXT"}
SEGMENT_STATES = ("pending", "running", "done", "failed")


class QueueFull(Exception):
    """As many jobs as allowed wait in the queue already (``args[0]``: how many)."""


@dataclass
class Job:
    id: str
    state: str
    url: str
    params: JobParams
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    frames_done: int = 0
    frames_total: int = 0
    fps: float = 0.0
    attempts: int = 0
    error: str | None = None
    plan: SegmentPlan | None = None
    #: Why the stored row cannot be read (its parameters or plan are damaged); such a job is
    #: shown with defaults and never runs.
    damage: str | None = None

    @property
    def eta_seconds(self) -> float | None:
        if self.state != "running" or self.fps <= 0 or self.frames_total <= 0:
            return None
        return max(self.frames_total - self.frames_done, 0) / self.fps


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """All job state; safe to use from several threads."""

    def __init__(self, database: Path | Database) -> None:
        """``database``: the service's database, or the path of a file to open."""
        self.database = Database.of(database)
        self.database.use(_SCHEMA, {"jobs": _ADDED_COLUMNS})
        self._db = self.database.connection
        self._lock = self.database.lock
        self._tx = self.database.transaction

    def close(self) -> None:
        self.database.release()

    def writable(self) -> bool:
        try:
            with self._tx() as db:
                db.execute("CREATE TABLE IF NOT EXISTS probe (x)")
            return True
        except sqlite3.Error:
            return False

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        """A row as a job; a row that does not read back (damaged parameters or plan) becomes
        a job with default parameters, no plan and its ``damage`` said, never an exception."""
        data = dict(row)
        data.pop("seq")
        problems = []
        try:
            data["params"] = JobParams.from_stored(data["params"])
        except Exception as exc:  # whatever the row holds
            data["params"] = JobParams()
            problems.append(f"its parameters ({_first_line(exc)})")
        plan = data.pop("plan", None)
        try:
            data["plan"] = SegmentPlan.from_dict(json.loads(plan)) if plan else None
        except Exception as exc:
            data["plan"] = None
            problems.append(f"its plan ({_first_line(exc)})")
        job = Job(**data)
        if problems:
            job.damage = f"the stored job cannot be read: {'; '.join(problems)}"
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list(
        self, offset: int = 0, limit: int = 50, state: str | None = None
    ) -> tuple[list[Job], int]:
        """Newest first; returns (page, total)."""
        where, args = ("WHERE state = ?", [state]) if state else ("", [])
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        return [self._job(r) for r in rows], total

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({state: n for state, n in rows})
        return counts

    # ------------------------------------------------------------------ writes

    def create(self, url: str, params: JobParams, max_queued: int | None = None) -> Job:
        """Queue a job; with ``max_queued``, :class:`QueueFull` when that many wait already
        (counted in the same transaction, so submissions at once cannot overshoot it)."""
        job = Job(new_job_id(), "queued", url, params, time.time())
        with self._tx() as db:
            if max_queued is not None:
                queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()
                if queued[0] >= max_queued:
                    raise QueueFull(queued[0])
            db.execute(
                "INSERT INTO jobs (id, state, url, params, created_at) VALUES (?, ?, ?, ?, ?)",
                (job.id, job.state, url, params.to_stored(), job.created_at),
            )
        return job

    def claim_next(self) -> Job | None:
        """The oldest queued job, now running (first in, first out). Queued jobs whose rows
        cannot be read are failed with the reason on the way."""
        with self._tx() as db:
            while True:
                row = db.execute(
                    "SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                damage = self._job(row).damage
                if damage is None:
                    break
                db.execute(
                    "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ?",
                    (damage, time.time(), row["id"]),
                )
            db.execute(
                "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?), "
                "attempts = attempts + 1, fps = 0 WHERE id = ?",
                (time.time(), row["id"]),
            )
        return self.get(row["id"])

    def progress(self, job_id: str, done: int, total: int, fps: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET frames_done = ?, frames_total = ?, fps = ? "
                "WHERE id = ? AND state = 'running'",
                (done, total, fps, job_id),
            )

    def finish(
        self, job_id: str, state: str, error: str | None = None, at: float | None = None
    ) -> bool:
        """Move a running or queued job to a final state (its running segments back to
        pending); False if it had already ended."""
        assert state in FINISHED
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, error = ?, finished_at = ?, "
                "frames_done = CASE WHEN ? = 'succeeded' THEN frames_total ELSE frames_done END "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (state, error, time.time() if at is None else at, state, job_id),
            )
            _no_longer_running(db, job_id)
        return cur.rowcount == 1

    def requeue(self, job_id: str) -> None:
        """Back to the queue after a graceful stop: that run does not count as an attempt."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0) "
                "WHERE id = ? AND state = 'running'",
                (job_id,),
            )
            _no_longer_running(db, job_id)

    def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """After a restart: interrupted jobs run again, or fail once out of attempts.

        Returns (requeued ids, failed ids).
        """
        with self._tx() as db:
            rows = db.execute("SELECT id, attempts FROM jobs WHERE state = 'running'").fetchall()
            again = [r["id"] for r in rows if r["attempts"] < max_attempts]
            failed = [r["id"] for r in rows if r["attempts"] >= max_attempts]
            for job_id in again:
                db.execute("UPDATE jobs SET state = 'queued' WHERE id = ?", (job_id,))
            for job_id in (*again, *failed):
                _no_longer_running(db, job_id)
            for job_id in failed:
                db.execute(
                    "UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE id = ?",
                    (
                        time.time(),
                        f"interrupted by a server restart {max_attempts} times; giving up",
                        job_id,
                    ),
                )
        return again, failed

    def expired(self, before: float) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') "
                "AND finished_at < ?",
                (before,),
            ).fetchall()
        return [r["id"] for r in rows]

    def delete(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # ------------------------------------------------------------------ segments

    def save_plan(self, job_id: str, plan: SegmentPlan) -> None:
        """Record a job's plan and its segments, all pending (replacing an earlier plan)."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET plan = ?, frames_total = ? WHERE id = ?",
                (json.dumps(plan.to_dict()), plan.frames, job_id),
            )
            db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
            db.executemany(
                "INSERT INTO segments (job_id, idx, start, duration, frames) "
                "VALUES (?, ?, ?, ?, ?)",
                [(job_id, s.index, s.start, s.duration, s.frames) for s in plan.segments],
            )

    def segments(self, job_id: str) -> list[SegmentRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM segments WHERE job_id = ? ORDER BY idx", (job_id,)
            ).fetchall()
        return [SegmentRecord.of(r) for r in rows]

    def segment_counts(self, job_ids: list[str]) -> dict[str, dict[str, int]]:
        """Per job: how many segments are in each state."""
        counts = {job_id: dict.fromkeys(SEGMENT_STATES, 0) for job_id in job_ids}
        if not job_ids:
            return counts
        marks = ",".join("?" * len(job_ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT job_id, state, COUNT(*) FROM segments WHERE job_id IN ({marks}) "
                "GROUP BY job_id, state",
                job_ids,
            ).fetchall()
        for job_id, state, n in rows:
            counts[job_id][state] = n
        return counts

    def segment_started(self, job_id: str, index: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE segments SET state = 'running', attempts = attempts + 1, error = NULL "
                "WHERE job_id = ? AND idx = ?",
                (job_id, index),
            )

    def segment_done(self, job_id: str, result: SegmentResult) -> None:
        """Only after the segment's file is published."""
        with self._tx() as db:
            db.execute(
                "UPDATE segments SET state = 'done', seconds = ?, bytes = ?, rotation = ?, "
                "node = ?, frames = ? WHERE job_id = ? AND idx = ?",
                (result.seconds, result.bytes, result.rotation, result.node, result.frames,
                 job_id, result.index),
            )  # fmt: skip

    def segment_failed(self, job_id: str, index: int, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE segments SET state = 'failed', error = ? WHERE job_id = ? AND idx = ?",
                (error, job_id, index),
            )

    def reset_unfinished_segments(self, job_id: str) -> None:
        """Segments that were running when the job stopped are pending again."""
        with self._tx() as db:
            db.execute(
                "UPDATE segments SET state = 'pending' WHERE job_id = ? AND state != 'done'",
                (job_id,),
            )


@dataclass(frozen=True)
class SegmentRecord:
    index: int
    state: str
    start: float
    duration: float
    frames: int
    attempts: int
    seconds: float | None
    bytes: int | None
    rotation: int
    node: str | None
    error: str | None

    @classmethod
    def of(cls, row: sqlite3.Row) -> SegmentRecord:
        data = dict(row)
        data.pop("job_id")
        data["index"] = data.pop("idx")
        return cls(**data)

    def result(self) -> SegmentResult | None:
        """What a done segment produced (None unless done)."""
        if self.state != "done" or self.bytes is None:
            return None
        return SegmentResult(
            index=self.index,
            frames=self.frames,
            bytes=self.bytes,
            seconds=self.seconds or 0.0,
            rotation=self.rotation,
            node=self.node or "",
        )


def _first_line(exc: BaseException) -> str:
    """An exception in a few words (pydantic's messages run over many lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _no_longer_running(db: sqlite3.Connection, job_id: str) -> None:
    """The segments a job was making when it stopped (it ended, went back to the queue, or
    the service stopped) are not being made any more."""
    db.execute("UPDATE segments SET state = 'pending' WHERE job_id = ? AND state = 'running'",
               (job_id,))  # fmt: skip
