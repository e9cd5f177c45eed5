"""Files sent from disk a chunk at a time, and a bound on how many are sent at once.

A response holds one chunk in memory (and the socket's buffers), never the whole file, however
large the file and however slowly the client reads; the file is open from the moment it is
found, so a cache eviction or a deletion meanwhile cannot cut the response short.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

CHUNK_BYTES = 64 * 1024


@dataclass
class OpenFile:
    """A file opened for a response, and its size."""

    handle: BinaryIO
    size: int

    @classmethod
    def of(cls, path: Path) -> OpenFile:
        """Open ``path`` (FileNotFoundError when it has gone)."""
        handle = open(path, "rb")  # noqa: SIM115 - closed by the response
        return cls(handle, os.fstat(handle.fileno()).st_size)


class FileStream(StreamingResponse):
    """Sends an :class:`OpenFile` and closes it, whether the client reads it all or not;
    ``on_close`` runs then too."""

    def __init__(
        self, file: OpenFile, media_type: str, on_close: Callable[[], None] | None = None
    ) -> None:
        super().__init__(self._chunks(file.handle), media_type=media_type,
                         headers={"content-length": str(file.size)})  # fmt: skip
        self._file, self._on_close = file, on_close

    @staticmethod
    async def _chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.close()

    def close(self) -> None:
        """Close the file (a response that is never sent must be closed by its maker)."""
        if not self._file.handle.closed:
            self._file.handle.close()
            if self._on_close is not None:
                self._on_close()


class Turns:
    """At most ``limit`` holders at once; :meth:`take` says whether one more may start."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self) -> bool:
        if self.held >= self.limit:
            return False
        self.held += 1
        return True

    def give(self) -> None:
        self.held -= 1
