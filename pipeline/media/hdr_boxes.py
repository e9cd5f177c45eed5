"""HDR10's static metadata in MP4 and QuickTime headers: the sample entry's ``mdcv`` and
``clli`` boxes (ISO/IEC 14496-12), and for HEVC a prefix SEI NAL unit with the same messages in
its decoder configuration (``hvcC``), where Apple's players look for it. The stream itself
carries the messages at each keyframe (the encoders write them); these are what a player reads
before it decodes anything."""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from carn_stream.pipeline.colour import StaticHdr
from carn_stream.pipeline.errors import OutputError
from carn_stream.pipeline.media.isobmff import (
    VISUAL_ENTRIES,
    VISUAL_FIELDS,
    box,
    box_header,
    boxes,
    nested,
    rebuilt,
)

#: SEI payload types of HDR10's static metadata in H.264 and HEVC; the boxes that carry the
#: same payloads.
MASTERING_DISPLAY, LIGHT_LEVEL = 137, 144
_BOXES = {MASTERING_DISPLAY: b"mdcv", LIGHT_LEVEL: b"clli"}
_PREFIX_SEI = 39  #: HEVC's prefix SEI NAL unit type


def sei_payloads(hdr: StaticHdr | None) -> dict[int, bytes]:
    """The SEI payloads of ``hdr``, by payload type (the boxes' payloads too; {} for None)."""
    payloads: dict[int, bytes] = {}
    if hdr is not None and hdr.mastering is not None:
        payloads[MASTERING_DISPLAY] = struct.pack(">8H2I", *hdr.mastering)
    if hdr is not None and hdr.light_level is not None:
        payloads[LIGHT_LEVEL] = struct.pack(">2H", *hdr.light_level)
    return payloads


def with_hdr(header: bytes, payloads: dict[int, bytes]) -> bytes:
    """``header`` (boxes holding a ``moov``) with its video sample entries' HDR10 metadata
    replaced by ``payloads`` (none: removed)."""

    def entry(kind: bytes, data: bytes, head: int) -> bytes:
        if kind not in VISUAL_ENTRIES:
            return data
        fields = head + VISUAL_FIELDS
        inner = b""
        for inner_kind, at, end, inner_head in boxes(data, fields, len(data)):
            if inner_kind == b"hvcC":
                inner += box(inner_kind, _hvcc_with_sei(data[at + inner_head:end], payloads))
            elif inner_kind not in _BOXES.values():
                inner += data[at:end]
        inner += b"".join(box(_BOXES[k], payloads[k]) for k in sorted(payloads))
        return box(kind, data[head:fields] + inner)

    return rebuilt(header, 0, len(header), entry)


def add_to_file(path: Path, hdr: StaticHdr, scratch: Path | None = None) -> bool:
    """Give the MP4 or QuickTime file ``path`` ``hdr`` in its video sample entry. The ``moov``
    grows: media after it moves (a faststart file is written again, through ``scratch``,
    by default ``.NAME.hdr.part`` beside it) and its chunk offsets follow. False, the file
    untouched, where it has no ``moov`` or one, is fragmented (its fragments' offsets would
    not follow), or an offset would outgrow its 32 bits."""
    payloads = sei_payloads(hdr)
    with open(path, "rb") as file:
        top = list(_top_level(file))
        found = [(start, end) for kind, start, end in top if kind == b"moov"]
        fragmented = any(kind in (b"moof", b"sidx", b"mfra") for kind, _, _ in top)
        if not payloads or len(found) != 1 or fragmented:
            return False
        start, end = found[0]
        file.seek(start)
        moov = file.read(end - start)
    if any(kind == b"mvex" for kind, *_ in boxes(moov, 8, len(moov))):
        return False
    new = with_hdr(moov, payloads)
    if new == moov:
        return True
    shifted = _offsets_moved(new, after=end, by=len(new) - len(moov))
    if shifted is None:
        return False
    last = end == top[-1][2]
    if last or len(new) == len(moov):  # nothing after the moov moves
        with open(path, "r+b") as file:
            file.seek(start)
            file.write(shifted)
            if last:
                file.truncate()
        return True
    scratch = scratch or path.with_name(f".{path.name}.hdr.part")
    try:
        with open(path, "rb") as source, open(scratch, "wb") as out:
            shutil.copyfileobj(_Range(source, 0, start), out)
            out.write(shifted)
            source.seek(end)
            shutil.copyfileobj(source, out)
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    return True


def _hvcc_with_sei(config: bytes, payloads: dict[int, bytes]) -> bytes:
    """An ``hvcC`` payload whose HDR10 SEI messages are replaced by one NAL unit of
    ``payloads`` (none: removed); its other NAL units and SEI messages stay (an encoder's own,
    x265's version string), in their order."""
    arrays: list[tuple[int, list[bytes]]] = []  #: (its first byte, its NAL units), in order
    at = 23  # 22 bytes of fields, then the number of arrays
    try:
        for _ in range(config[22]):
            kind, count = config[at], struct.unpack_from(">H", config, at + 1)[0]
            nals, at = [], at + 3
            for _ in range(count):
                length = struct.unpack_from(">H", config, at)[0]
                nals.append(config[at + 2:at + 2 + length])
                at += 2 + length
            arrays.append((kind, nals))
    except (IndexError, struct.error) as exc:
        raise OutputError("a malformed HEVC decoder configuration (hvcC)") from exc
    arrays = [(kind, [kept for nal in nals if (kept := _without_hdr(nal)) is not None]
               if kind & 0x3F == _PREFIX_SEI else nals) for kind, nals in arrays]  # fmt: skip
    if payloads:
        ours = _hevc_sei(payloads)
        seis = [i for i, (kind, _) in enumerate(arrays) if kind & 0x3F == _PREFIX_SEI]
        if seis:
            arrays[seis[0]][1].append(ours)
        else:  # after the parameter sets and any prefix SEI, before suffix SEI
            where = next((i for i, (kind, _) in enumerate(arrays) if kind & 0x3F > _PREFIX_SEI),
                         len(arrays))  # fmt: skip
            arrays.insert(where, (_PREFIX_SEI, [ours]))
    arrays = [(kind, nals) for kind, nals in arrays if nals]
    out = config[:22] + bytes([len(arrays)])
    for kind, nals in arrays:
        out += struct.pack(">BH", kind, len(nals))
        out += b"".join(struct.pack(">H", len(nal)) + nal for nal in nals)
    return out + config[at:]


def _without_hdr(nal: bytes) -> bytes | None:
    """A prefix SEI NAL unit without its HDR10 messages (None: it had nothing else; as it is
    where it has none, or cannot be read)."""
    rbsp, at, kept, dropped = nal[2:].replace(b"\0\0\3", b"\0\0"), 0, b"", False
    while at < len(rbsp) and rbsp[at:] != b"\x80":  # up to the RBSP trailing bits
        start = at
        kind, at = _sei_number(rbsp, at)
        size, at = _sei_number(rbsp, at)
        if at + size > len(rbsp):
            return nal
        if kind in _BOXES:
            dropped = True
        else:
            kept += rbsp[start:at + size]
        at += size
    if not dropped:
        return nal
    return nal[:2] + _escaped(kept + b"\x80") if kept else None


def _sei_number(rbsp: bytes, at: int) -> tuple[int, int]:
    """An SEI message's payload type or size (0xFF bytes, then the rest); where it ends."""
    value = 0
    while at < len(rbsp) and rbsp[at] == 0xFF:
        value, at = value + 255, at + 1
    return (value + rbsp[at], at + 1) if at < len(rbsp) else (value, at)


def _hevc_sei(payloads: dict[int, bytes]) -> bytes:
    """One HEVC prefix SEI NAL unit holding ``payloads`` (each under 255 bytes)."""
    rbsp = b"".join(bytes([kind, len(payload)]) + payload
                    for kind, payload in sorted(payloads.items()))  # fmt: skip
    return bytes([_PREFIX_SEI << 1, 1]) + _escaped(rbsp + b"\x80")


def _escaped(rbsp: bytes) -> bytes:
    """``rbsp`` with emulation prevention bytes (00 00 0x -> 00 00 03 0x), as a NAL unit holds
    it."""
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _offsets_moved(moov: bytes, after: int, by: int) -> bytes | None:
    """``moov`` with its chunk offsets (``stco``, ``co64``) at or past ``after`` moved by
    ``by``; None where a 32-bit one would overflow."""
    data = bytearray(moov)
    for kind, at, end, header in nested(moov, 0, len(moov)):
        if kind not in (b"stco", b"co64"):
            continue
        body = at + header  # version and flags, the count, the offsets
        form, size = (">Q", 8) if kind == b"co64" else (">I", 4)
        (count,) = struct.unpack_from(">I", moov, body + 4)
        if body + 8 + count * size > end:
            raise OutputError(f"a {kind.decode()} box longer than its entries")
        for where in range(body + 8, body + 8 + count * size, size):
            (offset,) = struct.unpack_from(form, moov, where)
            if offset >= after:
                if size == 4 and offset + by >= 2**32:
                    return None
                struct.pack_into(form, data, where, offset + by)
    return bytes(data)


def _top_level(file: BinaryIO) -> Iterator[tuple[bytes, int, int]]:
    """The top-level boxes of an open file, from their headers: (type, start, end)."""
    total = os.fstat(file.fileno()).st_size
    at = 0
    while at + 8 <= total:
        file.seek(at)
        kind, size, _ = box_header(file.read(16), total - at)
        yield kind, at, at + size
        at += size


class _Range:
    """The first ``length`` bytes from ``start`` of an open file, for copying."""

    def __init__(self, file: BinaryIO, start: int, length: int) -> None:
        self.file, self.left = file, length
        file.seek(start)

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.file.read(size)
        self.left -= len(data)
        return data
