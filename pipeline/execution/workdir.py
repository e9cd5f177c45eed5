"""A work folder that makes a command-line run resumable.

It holds the run's plan with what identifies the run (the input file's size and modification
time, and the options that shape the output), and a manifest with one line per published
segment. Running the same command again finds the finished segments there and skips them;
a different input, different options or a plan made by an earlier planning rule start afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from pathlib import Path
from typing import IO, Any

from carn_stream.pipeline.execution.executors import SegmentResult
from carn_stream.pipeline.media.formats import SEGMENTS_DIR
from carn_stream.pipeline.media.segments import SegmentPlan

PLAN_FILE, MANIFEST_FILE = "plan.json", "segments.jsonl"
#: A raw H.264/HEVC input's copy with timestamps, which the run reads instead of the input.
TIMED_INPUT = "input.mp4"
#: What an HLS playlist or DASH manifest input lists, joined: the run reads it instead.
JOINED_INPUT = "input.joined"
#: The input's copies a run reads instead of the input (kept when a run starts).
INPUT_COPIES = (TIMED_INPUT, JOINED_INPUT)
#: The file a run holds locked while it uses the folder (:meth:`WorkDir.hold`).
LOCK_FILE = ".lock"
#: Every name a run writes in its work folder. Nothing else there is touched: the folder may
#: be one a user named.
OWN_NAMES = (PLAN_FILE, MANIFEST_FILE, SEGMENTS_DIR, *INPUT_COPIES, LOCK_FILE)
#: The names of what a run writes on its way to those: the plan and a timed copy while they
#: are written, and a joined input's partial join, its fetch folder and the audio waiting
#: beside it.
_ON_THE_WAY = re.compile(
    rf"\.(?:{re.escape(PLAN_FILE)}|{re.escape(TIMED_INPUT)})\.part"
    rf"|\.{re.escape(JOINED_INPUT)}\.(?:part|listed|apart\.json(?:\.part)?|audio\d+)"
)


def is_own(name: str, names: tuple[str, ...] = OWN_NAMES) -> bool:
    """Whether ``name`` in a work folder is one of ``names``, or written on its way to one."""
    if name in names:
        return True
    return bool(_ON_THE_WAY.fullmatch(name)) and name.startswith(tuple(f".{n}." for n in names))


class ForeignWorkDir(ValueError):
    """A work folder named for a run that holds other files (a user's): never used."""


class WorkDirBusy(ForeignWorkDir):
    """A work folder another run is using now."""


def run_identity(source: Path, **options: Any) -> dict[str, Any]:
    """What must match for a work folder to be resumed."""
    stat = source.stat()
    return {"source": str(source.resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, **options}  # fmt: skip


class WorkDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def check_own(self, *files: Path) -> None:
        """Refuse a folder that holds anything a run does not write, or any of ``files`` (the
        input, the output): a folder of the user's named as the work folder, what is in it
        would be in the way, or lost."""
        if self.path.is_file():
            raise ForeignWorkDir(f"{self.path} is a file, not a work folder")
        if not self.path.is_dir():
            return  # not there yet (or where it cannot be: the output's checks say why)
        for file in files:
            if file.parent.is_dir() and os.path.samefile(file.parent, self.path):
                raise ForeignWorkDir(f"{self.path} holds {file.name}; name a folder of its own "
                                     "as the work folder")  # fmt: skip
        foreign = sorted(e.name for e in self.path.iterdir() if not is_own(e.name))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ForeignWorkDir(f"{self.path} holds files that are not a run's ({shown}); "
                                 "name a new or empty folder as the work folder")  # fmt: skip

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

    def start(
        self, identity: dict[str, Any], plan: SegmentPlan, weights: str | None = None
    ) -> None:
        """Begin a new run here: what an earlier run wrote is removed, apart from the input's
        copies (the plan was just made from one). ``weights``: what identifies the model's
        weights (known once it is loaded)."""
        self._remove_own(keep=INPUT_COPIES)
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / PLAN_FILE, json.dumps({"identity": identity, "weights": weights,
                                                         "plan": plan.to_dict()}))  # fmt: skip

    def weights(self) -> str | None:
        """What identified the weights of the run here (None: unknown)."""
        try:
            return json.loads((self.path / PLAN_FILE).read_text()).get("weights")
        except (OSError, ValueError, AttributeError):
            return None

    def record(self, result: SegmentResult, segment_path: Path) -> None:
        """Note a published segment (after its rename), durably."""
        line = json.dumps({**result.__dict__, "file": str(segment_path)})
        with open(self.path / MANIFEST_FILE, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def hold(self) -> IO[bytes]:
        """Make the folder if need be and hold it for this run until the returned file is
        closed (or the process ends): two runs of one command at once "resumed" each other's
        live folder, wrote the same segments, and the first to end removed them under the
        other. :class:`WorkDirBusy` where another run holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = open(self.path / LOCK_FILE, "ab")  # noqa: SIM115 (held for the whole run)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise WorkDirBusy(f"another run is using the work folder {self.path} now; wait for "
                              "it to end, or name another work folder") from None  # fmt: skip
        return lock

    def remove(self) -> None:
        """Remove what runs wrote here, and the folder once that leaves it empty (the run is
        over: its lock goes too)."""
        self._remove_own()
        (self.path / LOCK_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def _remove_own(self, keep: tuple[str, ...] = ()) -> None:
        if not self.path.is_dir():
            return
        for entry in self.path.iterdir():
            # (the lock goes with the folder only: removed while held, a new one could be taken)
            if not is_own(entry.name) or is_own(entry.name, (*keep, LOCK_FILE)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

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
