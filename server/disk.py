"""The data folder's disk floor (``CARN_STREAM_MIN_FREE_DISK_BYTES``): how far below it a disk
is, and how that reads in an error."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

MIB = 2**20


@dataclass(frozen=True)
class DiskSpace:
    """Free bytes on a disk, against the floor the service keeps free (0: no floor)."""

    free: int
    floor: int

    def shortfall(self, needed: int = 0) -> int:
        """Bytes missing for ``needed`` more to leave the disk at its floor; 0 when they fit
        (always without a floor)."""
        return max(0, self.floor + needed - self.free) if self.floor else 0

    def describe(self, needed: int | None = None) -> str:
        """``"<free> MiB free[, <needed> MiB needed], <floor> MiB kept free"``."""
        wanted = "" if needed is None else f", {needed // MIB} MiB needed"
        return f"{self.free // MIB} MiB free{wanted}, {self.floor // MIB} MiB kept free"


def disk_space(path: Path, floor: int) -> DiskSpace:
    """The disk holding ``path``, against ``floor`` (not looked at without a floor)."""
    return DiskSpace(shutil.disk_usage(path).free if floor else 0, floor)
