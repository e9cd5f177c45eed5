"""A work folder that makes a command-line run resumable.

It holds the run's plan with what identifies the run (the input file's size and modification
time, and the options that shape the output), and a manifest with one line per published
segment. Running the same command again finds the finished segments there and skips them;
a different input, different options or a plan made by an earlier planning rule start afresh.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from carn_stream.pipeline.execution.executors import SegmentResult
from carn_stream.pipeline.media.segments import SegmentPlan

PLAN_FILE, MANIFEST_FILE = "plan.json", "segments.jsonl"
#: A raw H.264/HEVC input's copy with timestamps, which the run reads instead of the input.
TIMED_INPUT = "input.mp4"
#: What an HLS playlist or DASH manifest input lists, joined: the run reads it instead.
JOINED_INPUT = "input.joined"
#: The input's copies a run reads instead of the input (kept when a run starts).
INPUT_COPIES = (TIMED_INPUT, JOINED_INPUT)


def run_identity(source: Path, **options: Any) -> dict[str, Any]:
    """What must match for a work folder to be resumed."""
    stat = source.stat()
    return {"source": str(source.resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, **options}  # fmt: skip


class WorkDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def resume(self, identity: dict[str, Any]) -> tuple[SegmentPlan, dict[int, SegmentResult]]:
        """The stored plan and finished segments of the same run; raises LookupError if
        there is none (or it belongs to another run)."""
        try:
            stored = json.loads((self.path / PLAN_FILE).read_text())
            if stored["identity"] != identity:
                raise LookupError("the work folder belongs to another run")
            plan = SegmentPlan.from_dict(stored["plan"])
            if not plan.current:
                raise LookupError(f"the work folder was planned by rule {plan.rule}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LookupError(f"no resumable run ({exc})") from exc
        return plan, self._finished()

    @property
    def timed_input(self) -> Path:
        return self.path / TIMED_INPUT

    @property
    def joined_input(self) -> Path:
        return self.path / JOINED_INPUT

    def forget(self) -> None:
        """Before a new run is planned: its plan and the input's copies go, so that a run
        stopped before :meth:`start` leaves nothing another run could take up."""
        for name in (PLAN_FILE, *INPUT_COPIES):
            (self.path / name).unlink(missing_ok=True)

    def start(self, identity: dict[str, Any], plan: SegmentPlan) -> None:
        """Begin a new run here: whatever was in the folder is removed, apart from the input's
        copies (the plan was just made from one)."""
        if self.path.is_dir():
            for entry in self.path.iterdir():
                if entry.name in INPUT_COPIES:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / PLAN_FILE, json.dumps({"identity": identity,
                                                         "plan": plan.to_dict()}))  # fmt: skip

    def record(self, result: SegmentResult, segment_path: Path) -> None:
        """Note a published segment (after its rename), durably."""
        line = json.dumps({**result.__dict__, "file": str(segment_path)})
        with open(self.path / MANIFEST_FILE, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _finished(self) -> dict[int, SegmentResult]:
        done: dict[int, SegmentResult] = {}
        try:
            lines = (self.path / MANIFEST_FILE).read_text().splitlines()
        except OSError:
            return done
        for line in lines:
            try:
                data = json.loads(line)
                path = Path(data.pop("file"))
                result = SegmentResult(**data)
            except (ValueError, TypeError, KeyError):
                continue  # a line cut short by a crash
            if path.is_file() and path.stat().st_size == result.bytes:
                done[result.index] = result
        return done


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    os.replace(part, path)
