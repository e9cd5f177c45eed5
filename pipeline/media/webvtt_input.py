"""WebVTT subtitle segments of an HLS subtitle rendition, read into cues on the media's clock
(RFC 8216 3.5: ``X-TIMESTAMP-MAP`` maps a cue time, ``LOCAL``, to a 90 kHz ``MPEGTS`` time of
the video's; without it, cue time 0 is MPEGTS time 0), counted on past MPEG-TS time's 33-bit
wrap as the video's are (:class:`MpegtsClock`). A cue a rendition repeats in the
segments it spans counts once. Cue text keeps italics, bold and underline (which SubRip has
too); other markup (voices, classes, ruby, times) goes, and character references are read. A
cue whose timing cannot be read is skipped, as WebVTT's parser skips it, and so is one that
ends before the media's earliest time (0, unless moved back before a wrap) or lies past any time
MPEG-TS counts to."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from fractions import Fraction

from carn_stream.pipeline.media.listing import ListingError

#: The most bytes one WebVTT segment may have (a few minutes of cues are a few KB).
MAX_SEGMENT_BYTES = 1024 * 1024
#: The most cues one subtitle rendition may have, and the most text (bytes) in all of them.
MAX_CUES = 100_000
MAX_TEXT_BYTES = 8 * 1024 * 1024

#: MPEG-TS time's range (90 kHz ticks): it starts again at 0 after 26.5 hours.
MPEGTS_WRAP = 2**33

_TIME = r"(?:(\d+):)?(\d{2}):(\d{2})\.(\d{3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")
_MAP = re.compile(rf"^X-TIMESTAMP-MAP=(?=.*MPEGTS:(\d+))(?=.*LOCAL:{_TIME})")
_TAG = re.compile(r"<(/?)([a-zA-Z0-9]+)[^<>]*>")  # (never across a "<": linear time)
_KEPT_TAGS = frozenset({"i", "b", "u"})


#: The latest time a cue may have (seconds): twice MPEG-TS time's range (a wrap), and a day
#: beyond it for a playlist's local times.
LATEST = Fraction(2 * MPEGTS_WRAP, 90_000) + 86_400


@dataclass(frozen=True, order=True)
class Cue:
    """A cue: its times on the media's clock (seconds) and its text (SubRip's markup)."""

    start: Fraction
    end: Fraction
    text: str


def _seconds(hours: str | None, minutes: str, seconds: str, millis: str) -> Fraction:
    return (int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)) + Fraction(int(millis), 1000)


def _text(lines: list[str]) -> str:
    def keep(match: re.Match) -> str:
        tag = match.group(2).lower()
        return f"<{match.group(1)}{tag}>" if tag in _KEPT_TAGS else ""  # (classes dropped)

    return html.unescape(_TAG.sub(keep, "\n".join(lines))).strip()


class MpegtsClock:
    """The ``MPEGTS`` times of one rendition's segments, counted on past a wrap as FFmpeg's
    demuxer counts the video's (so that cues stay with it): from the first time seen, less a
    minute, a time below that is after the wrap and is moved on by the wrap; but where the
    first time is within a minute of the wrap, a time from there on is before it, and is moved
    back instead (shown before 0)."""

    _MINUTE = 60 * 90_000

    def __init__(self) -> None:
        self._reference: int | None = None
        self._back = False

    def unwrap(self, ticks: int) -> int:
        if self._reference is None:
            self._reference = ticks - self._MINUTE
            self._back = ticks >= MPEGTS_WRAP - self._MINUTE
        if self._back:
            return ticks - MPEGTS_WRAP if ticks >= self._reference else ticks
        return ticks + MPEGTS_WRAP if ticks < self._reference else ticks

    @property
    def earliest(self) -> Fraction:
        """The earliest time the media may show (seconds): before 0 where times were moved
        back."""
        if not self._back or self._reference is None:
            return Fraction(0)
        return Fraction(self._reference - MPEGTS_WRAP, 90_000)


def read_segment(text: str, name: str, clock: MpegtsClock | None = None) -> list[Cue]:
    """The cues of one WebVTT segment (``name`` in refusals), on the media's clock; ``clock``:
    the rendition's, where the segment is one of several in order."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not lines[0].startswith("WEBVTT"):
        raise ListingError(f"{name} is not WebVTT (it does not start with WEBVTT)")
    offset = Fraction(0)
    at = 1
    while at < len(lines) and lines[at].strip():  # the header's lines
        if found := _MAP.match(lines[at].strip()):
            mpegts, *local = found.groups()
            ticks = int(mpegts) if clock is None else clock.unwrap(int(mpegts))
            offset = Fraction(ticks, 90_000) - _seconds(*local)
        at += 1
    earliest = Fraction(0) if clock is None else clock.earliest
    cues = []
    while at < len(lines):
        block = []
        while at < len(lines) and lines[at].strip():
            block.append(lines[at])
            at += 1
        at += 1
        timing = next((n for n, line in enumerate(block[:2]) if "-->" in line), None)
        if timing is None:
            continue  # NOTE, STYLE, REGION, or a stray line
        found = _TIMING.match(block[timing])
        if found is None:
            continue  # (a timing that cannot be read: the cue is skipped)
        start = _seconds(*found.groups()[:4]) + offset
        end = max(_seconds(*found.groups()[4:]) + offset, start)
        if end <= earliest or end > LATEST:
            continue
        if text := _text(block[timing + 1 :]):
            cues.append(Cue(max(start, earliest), end, text))
    return cues


class Cues:
    """One rendition's cues, gathered segment by segment, each once; refused as soon as they
    pass :data:`MAX_CUES` or :data:`MAX_TEXT_BYTES` (``what`` names them)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._cues: set[Cue] = set()
        self._text_bytes = 0

    def add(self, segment: list[Cue]) -> None:
        for cue in segment:
            if cue not in self._cues:
                self._cues.add(cue)
                self._text_bytes += len(cue.text.encode("utf-8"))
        if len(self._cues) > MAX_CUES:
            raise ListingError(f"{self.what} has over {MAX_CUES} cues, the limit")
        if self._text_bytes > MAX_TEXT_BYTES:
            raise ListingError(f"{self.what} has over {MAX_TEXT_BYTES} bytes of cue text, the "
                               "limit")  # fmt: skip

    def in_order(self) -> list[Cue]:
        return sorted(self._cues)
