"""WebVTT subtitle segments of an HLS subtitle rendition, read into cues on the media's clock
(RFC 8216 3.5: ``X-TIMESTAMP-MAP`` maps a cue time, ``LOCAL``, to a 90 kHz ``MPEGTS`` time of
the video's; without it, cue time 0 is MPEGTS time 0). A cue a rendition repeats in the
segments it spans counts once. Cue text keeps italics, bold and underline (which SubRip has
too); other markup (voices, classes, ruby, times) goes, and character references are read."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from fractions import Fraction

from carn_stream.pipeline.media.listing import ListingError

#: The most bytes one WebVTT segment may have (a few minutes of cues are a few KB).
MAX_SEGMENT_BYTES = 1024 * 1024
#: The most cues one subtitle rendition may have.
MAX_CUES = 100_000

_TIME = r"(?:(\d+):)?(\d{2}):(\d{2})\.(\d{3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s+-->\s+{_TIME}")
_MAP = re.compile(rf"^X-TIMESTAMP-MAP=(?=.*MPEGTS:(\d+))(?=.*LOCAL:{_TIME})")
_TAG = re.compile(r"</?([a-zA-Z0-9]+)[^>]*>")
_KEPT_TAGS = frozenset({"i", "b", "u"})


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
        return match.group(0) if match.group(1).lower() in _KEPT_TAGS else ""

    return html.unescape(_TAG.sub(keep, "\n".join(lines))).strip()


def read_segment(text: str, name: str) -> list[Cue]:
    """The cues of one WebVTT segment (``name`` in refusals), on the media's clock."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not lines[0].startswith("WEBVTT"):
        raise ListingError(f"{name} is not WebVTT (it does not start with WEBVTT)")
    offset = Fraction(0)
    at = 1
    while at < len(lines) and lines[at].strip():  # the header's lines
        if found := _MAP.match(lines[at].strip()):
            mpegts, *local = found.groups()
            offset = Fraction(int(mpegts), 90_000) - _seconds(*local)
        at += 1
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
            raise ListingError(f"{name} has a malformed cue timing: {block[timing]!r}")
        start, end = _seconds(*found.groups()[:4]), _seconds(*found.groups()[4:])
        if text := _text(block[timing + 1 :]):
            cues.append(Cue(start + offset, max(end, start) + offset, text))
    return cues


def merged(segments: list[list[Cue]], what: str) -> list[Cue]:
    """One rendition's cues from its segments, in time order, each once."""
    cues = sorted({cue for segment in segments for cue in segment})
    if len(cues) > MAX_CUES:
        raise ListingError(f"{what} has {len(cues)} cues, over the limit of {MAX_CUES}")
    return cues
