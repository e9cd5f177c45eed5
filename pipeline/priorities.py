"""Who goes first when work waits for the model or for an executor's slots: lower values first,
equal values in arrival order. The inference worker's queue and the executor's slots both use
this one scale."""

from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    LIVE = 0  #: a live session's frame: someone is watching it now
    WAITED = 3  #: a segment a player is waiting for
    PREFETCH = 6  #: a segment made ahead of a player
    JOB = 10  #: a batch job
