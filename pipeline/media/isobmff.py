"""ISO base media file format (MP4, QuickTime) boxes: walking them, and rebuilding the boxes
around the sample descriptions with some of them changed (sizes follow)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from carn_stream.pipeline.errors import OutputError

#: The sample entries MP4 and QuickTime files name H.264 and HEVC by: the parameter sets in the
#: entry's decoder configuration (``hvc1`` is the form Apple's players take; FFmpeg's default
#: for HEVC, ``hev1``, they refuse).
SAMPLE_ENTRIES = {"hevc": "hvc1", "h264": "avc1"}
#: Boxes inside which the sample descriptions lie (the decoder configuration), from moov down.
CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl"})
#: Visual sample entries, and the length of their fields before their own boxes.
VISUAL_ENTRIES = frozenset({b"hvc1", b"hev1", b"avc1", b"avc3"})
VISUAL_FIELDS = 78

#: A sample entry's new bytes from its type, its bytes and its header's length.
EntryEdit = Callable[[bytes, bytes, int], bytes]


def box_header(head: bytes, room: int) -> tuple[bytes, int, int]:
    """A box's type, size and header length from its first bytes (16 where it has them);
    ``room``: the bytes from its start to where it must end (a size of 0: all of them)."""
    size, kind = struct.unpack_from(">I4s", head)
    length = 8
    if size == 1 and len(head) >= 16:
        (size,) = struct.unpack_from(">Q", head, 8)
        length = 16
    elif size == 0:
        size = room
    if size < length or size > room:
        raise OutputError(f"a malformed {kind!r} box in an MP4 header")
    return kind, size, length


def boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """The boxes in ``data[start:end]``: (type, start, end, header length)."""
    at = start
    while at + 8 <= end:
        kind, size, header = box_header(data[at:at + 16], end - at)
        yield kind, at, at + size, header
        at += size


def nested(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """:func:`boxes`, and those inside each of :data:`CONTAINERS` (after it), at any depth."""
    for kind, at, box_end, header in boxes(data, start, end):
        yield kind, at, box_end, header
        if kind in CONTAINERS:
            yield from nested(data, at + header, box_end)


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def rebuilt(data: bytes, start: int, end: int, entry: EntryEdit) -> bytes:
    """``data[start:end]`` with each sample entry as ``entry`` returns it, the boxes around it
    resized."""
    out = b""
    for kind, at, box_end, header in boxes(data, start, end):
        body = at + header
        if kind in CONTAINERS:
            out += box(kind, rebuilt(data, body, box_end, entry))
        elif kind == b"stsd":  # version, flags and the entry count, then the entries
            entries = [entry(k, data[a:e], h) for k, a, e, h in boxes(data, body + 8, box_end)]
            out += box(kind, data[body:body + 8] + b"".join(entries))
        else:
            out += data[at:box_end]
    return out
