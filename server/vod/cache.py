"""The segment cache of videos served on request: files on disk, a byte budget, LRU eviction.

Layout: ``<root>/<video id>/<rendition>/segment_NNNNN.ts`` (a fragmented-MP4 rendition's:
``segment_NNNNN.m4s``, beside its ``init.mp4``, which is kept). A segment is cached once its file
is published (by rename); the index of what is cached, with its sizes and recency, is rebuilt
from the folder at start (recency from the files' modification times, which a cache hit
updates). Used from the event loop only; file reads and removals are plain calls that the
caller may move to a thread.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Container
from pathlib import Path
from typing import NamedTuple

from carn_stream.pipeline.media.hls import either_segment_index, segment_name
from carn_stream.server.streaming import OpenFile

log = logging.getLogger(__name__)

#: What the cached segments were made with (the settings that change their pictures), beside
#: the videos' folders.
MADE_WITH_NAME = "made-with.json"


class Key(NamedTuple):
    video: str
    rendition: str
    index: int


class SegmentCache:
    def __init__(self, root: Path, budget: int) -> None:
        self.root, self.budget = root, budget
        self._entries: OrderedDict[Key, int] = OrderedDict()  #: least recently used first
        self._fragments: set[Key] = set()  #: segments cached as fragmented MP4 (``.m4s``)
        self.bytes = 0
        self._scan()

    def _scan(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, Key, int]] = []
        for path in self.root.glob("*/*/*"):
            if path.name.startswith(".") and path.name.endswith(".part"):
                path.unlink(missing_ok=True)  # an unfinished segment of an earlier run
            elif (index := either_segment_index(path.name)) is not None:
                stat = path.stat()
                found.append((stat.st_mtime, Key(path.parts[-3], path.parts[-2], index),
                              stat.st_size, path.suffix == ".m4s"))  # fmt: skip
        for _, key, size, fragment in sorted(found):
            if key in self._entries:  # (both kinds of one segment: the newer is kept)
                older = self.path(key, key in self._fragments)
                self.bytes -= self._entries[key]
                self._fragments.discard(key)
                older.unlink(missing_ok=True)
            self._entries[key] = size
            self.bytes += size
            if fragment:
                self._fragments.add(key)
        self._evict(keep=0)  # the budget may have been lowered since

    def folder(self, video: str) -> Path:
        return self.root / video

    def path(self, key: Key, fragment: bool | None = None) -> Path:
        """The segment's file: as cached, or (not cached) where it goes, a fragmented-MP4
        media segment if ``fragment``."""
        if fragment is None:
            fragment = key in self._fragments
        return self.root / key.video / key.rendition / segment_name(key.index, fragment)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def touch(self, key: Key) -> bool:
        """Mark a cached segment as just used; False when it is not cached."""
        if key not in self._entries:
            return False
        self._entries.move_to_end(key)
        try:
            os.utime(self.path(key))
        except FileNotFoundError:  # removed behind our back
            self.bytes -= self._entries.pop(key)
            self._fragments.discard(key)
            return False
        return True

    def open(self, key: Key) -> OpenFile | None:
        """The cached segment opened (its recency refreshed), or None when it is not cached."""
        if not self.touch(key):
            return None
        try:
            return OpenFile.of(self.path(key))
        except FileNotFoundError:
            return None

    def add(self, key: Key, size: int, shortfall: int = 0, fragment: bool = False) -> list[Key]:
        """Record a published segment (``fragment``: a fragmented-MP4 one) and evict the least
        recently used ones beyond the budget, and enough for ``shortfall`` bytes more room on
        the disk (never the new one); returns the keys evicted."""
        if key in self._entries:
            self.bytes -= self._entries.pop(key)
        self._entries[key] = size
        self.bytes += size
        self._fragments.discard(key)
        if fragment:
            self._fragments.add(key)
        return self._evict(keep=1, shortfall=shortfall)

    def make_room(self, shortfall: int) -> list[Key]:
        """Evict the least recently used segments until ``shortfall`` bytes are freed (or the
        cache is empty); returns the keys evicted."""
        return self._evict(keep=0, shortfall=shortfall)

    def _evict(self, keep: int, shortfall: int = 0) -> list[Key]:
        """Remove the least recently used segments while over the budget or short of
        ``shortfall`` bytes freed, never the ``keep`` most recent; returns the keys evicted."""
        evicted, freed = [], 0
        while (self.bytes > self.budget or freed < shortfall) and len(self._entries) > keep:
            old, old_size = next(iter(self._entries.items()))
            del self._entries[old]
            self.bytes -= old_size
            freed += old_size
            self.path(old).unlink(missing_ok=True)
            self._fragments.discard(old)
            evicted.append(old)
        return evicted

    def cached(self, video: str) -> dict[str, dict[int, int]]:
        """Per rendition of ``video``: segment index -> bytes."""
        out: dict[str, dict[int, int]] = {}
        for key, size in list(self._entries.items()):  # read from request threads too
            if key.video == video:
                out.setdefault(key.rendition, {})[key.index] = size
        return out

    def drop(self, video: str, rendition: str) -> int:
        """Remove every cached segment of one rendition of ``video``; returns how many."""
        keys = [k for k in self._entries if (k.video, k.rendition) == (video, rendition)]
        for key in keys:
            self.bytes -= self._entries.pop(key)
            self.path(key).unlink(missing_ok=True)
            self._fragments.discard(key)
        return len(keys)

    def keep_made_with(
        self, made_with: dict[str, object], unchanged: Container[str],
        follows: Callable[[str], bool] = lambda video: True,
    ) -> int:  # fmt: skip
        """Remove the segments made with other settings than ``made_with`` (as the record of
        the last start says; none recorded: nothing to compare), but those of the renditions
        in ``unchanged`` (copied as they are) and of the videos that do not ``follow`` the
        settings (they record their own choice); record ``made_with``. Returns how many went.
        A record that cannot be written is logged: the service starts all the same."""
        record = self.root / MADE_WITH_NAME
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError):
            before = None
        if before == made_with:
            return 0
        gone = 0
        if before is not None:
            for video, rendition in {(k.video, k.rendition) for k in self._entries}:
                if rendition not in unchanged and follows(video):
                    gone += self.drop(video, rendition)
        try:
            with tempfile.NamedTemporaryFile("w", dir=self.root, prefix=".made-with.",
                                             delete=False) as part:  # fmt: skip
                part.write(json.dumps(made_with, sort_keys=True))
            Path(part.name).replace(record)
        except OSError as exc:
            log.warning("could not record the settings the cached segments follow: %s", exc)
        return gone

    def forget(self, video: str) -> None:
        """Forget every segment of ``video`` (the caller removes its folder)."""
        for key in [k for k in self._entries if k.video == video]:
            self.bytes -= self._entries.pop(key)
            self._fragments.discard(key)
