"""MPEG-DASH as an input: reading a static manifest (MPD, ISO/IEC 23009-1) into a
:class:`~carn_stream.pipeline.media.listing.Listing` of what to fetch.

The input is the video representation with the most pixels (then the highest bandwidth), with
the highest-bandwidth representation of each audio adaptation set (the main one first). A
representation's parts are its initialization section and segments as its
``SegmentTemplate`` (numbered, or timed by a ``SegmentTimeline``) or ``SegmentList`` names
them, or the one file its ``BaseURL`` names (the on-demand profile). Refused, saying why:
live manifests (``type="dynamic"``), several periods (splices), content protection (DRM),
byte ranges of several files.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass

from carn_stream.pipeline.media.listing import (
    AUDIO_CODEC_TAGS,
    MAX_SEGMENTS,
    Listed,
    ListedAudio,
    Listing,
    ListingError,
    absolute,
    check_contiguous,
    whole_number,
)

#: How a manifest's root element starts, after an XML declaration or comments.
_ROOT = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?MPD[\s>]")
_DURATION = re.compile(
    r"P(?:(?P<days>[\d.]+)D)?(?:T(?:(?P<hours>[\d.]+)H)?(?:(?P<minutes>[\d.]+)M)?"
    r"(?:(?P<seconds>[\d.]+)S)?)?"
)
_IDENTIFIER = re.compile(r"\$\$|\$(\w+)(?:%0(\d+)d)?\$")
_VIDEO_CODECS = ("avc", "hvc", "hev", "av01", "vp8", "vp08", "vp9", "vp09", "dvh", "mp4v")


def is_manifest(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first KB or so) is a DASH manifest."""
    return _ROOT.search(head) is not None


def seconds(duration: str) -> float:
    """An xs:duration (``PT1H2M3.5S``, ``P1DT2H``) in seconds."""
    match = _DURATION.fullmatch(duration.strip())
    if match is None or not any(match.groupdict().values()):
        raise ListingError(f"the manifest has a malformed duration: {duration!r}")
    scales = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
    return sum(float(v) * scales[k] for k, v in match.groupdict().items() if v)


@dataclass(frozen=True)
class Representation:
    """One ``Representation`` as its adaptation set and period shape it."""

    id: str
    kind: str  #: "video", "audio" or "other"
    bandwidth: int
    width: int
    height: int
    parts: Listed
    language: str | None = None
    name: str = ""
    main: bool = False  #: its adaptation set has the role "main"
    protected: bool = False


def dash_listing(text: str, url: str) -> Listing:
    """What the manifest ``text`` (from ``url``) lists to fetch: its best video and the best
    representation of each audio adaptation set."""
    representations = list(parse_manifest(text, url))
    videos = [r for r in representations if r.kind == "video"]
    if not videos:
        raise ListingError("the manifest lists no video")
    video = max(videos, key=lambda r: (r.width * r.height, r.bandwidth))
    audio: dict[tuple[str | None, str, bool], Representation] = {}
    for r in (r for r in representations if r.kind == "audio"):
        key = (r.language, r.name, r.main)  # an adaptation set's
        if key not in audio or r.bandwidth > audio[key].bandwidth:
            audio[key] = r
    chosen = sorted(audio.values(), key=lambda r: not r.main)
    for r in (video, *chosen):
        if r.protected:
            raise ListingError(f"the manifest's representation {r.id!r} is protected (DRM); "
                               "protected content is not read")  # fmt: skip
    listed = tuple(ListedAudio(r.parts, r.name or r.language or "", r.language) for r in chosen)
    return Listing(video.parts, listed)


def parse_manifest(text: str, url: str) -> Iterator[Representation]:
    """Every representation of the static, single-period manifest ``text`` (from ``url``)."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise ListingError(f"the manifest is not well-formed XML ({exc})") from None
    if _local(root.tag) != "MPD":
        raise ListingError("not a DASH manifest (its root is not MPD)")
    if root.get("type", "static") != "static":
        raise ListingError("the manifest is live (type=\"dynamic\"); only static (video on "
                           "demand) manifests are read")  # fmt: skip
    periods = _children(root, "Period")
    if len(periods) != 1:
        raise ListingError(f"the manifest has {len(periods)} periods; only manifests of one "
                           "period are read (several splice separate streams)")  # fmt: skip
    period = periods[0]
    length = period.get("duration") or root.get("mediaPresentationDuration")
    duration = seconds(length) if length else None
    base = _base(_base(url, root), period)
    for adaptation in _children(period, "AdaptationSet"):
        set_base = _base(base, adaptation)
        roles = {r.get("value") for r in _children(adaptation, "Role")}
        labels = [label.text or "" for label in _children(adaptation, "Label")]
        for rep in _children(adaptation, "Representation"):
            kind = _kind(adaptation, rep)
            yield Representation(
                id=rep.get("id", ""),
                kind=kind,
                bandwidth=whole_number(rep.get("bandwidth")),
                width=whole_number(rep.get("width") or adaptation.get("width")),
                height=whole_number(rep.get("height") or adaptation.get("height")),
                parts=_parts(adaptation, rep, _base(set_base, rep), duration)
                if kind in ("video", "audio") else Listed(()),
                language=adaptation.get("lang") or rep.get("lang"),
                name=labels[0].strip() if labels else "",
                main="main" in roles,
                protected=bool(_children(adaptation, "ContentProtection")
                               or _children(rep, "ContentProtection")),
            )  # fmt: skip


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in element if _local(child.tag) == name]


def _base(url: str, element: ElementTree.Element) -> str:
    """``url`` moved by the element's first ``BaseURL``, if it has one."""
    found = _children(element, "BaseURL")
    return absolute((found[0].text or "").strip(), url) if found else url


def _kind(adaptation: ElementTree.Element, rep: ElementTree.Element) -> str:
    kind = adaptation.get("contentType") or ""
    mime = rep.get("mimeType") or adaptation.get("mimeType") or ""
    codecs = (rep.get("codecs") or adaptation.get("codecs") or "").lower()
    for candidate in (kind, mime.partition("/")[0]):
        if candidate in ("video", "audio"):
            return candidate
    if codecs.startswith(_VIDEO_CODECS):
        return "video"
    return "audio" if codecs.startswith(AUDIO_CODEC_TAGS) else "other"  # (subtitles: other)


def _parts(
    adaptation: ElementTree.Element,
    rep: ElementTree.Element,
    base: str,
    duration: float | None,
) -> Listed:
    """The representation's files in order (see the module's docstring)."""
    templates = [*_children(adaptation, "SegmentTemplate"), *_children(rep, "SegmentTemplate")]
    if templates:
        merged = {k: v for t in templates for k, v in t.attrib.items()}
        timelines = [tl for t in templates for tl in _children(t, "SegmentTimeline")]
        parts = _template(merged, timelines[-1] if timelines else None, rep, base, duration)
    elif lists := _children(rep, "SegmentList") or _children(adaptation, "SegmentList"):
        parts = _segment_list(lists[0], base)
    else:
        return Listed((base,))  # SegmentBase or none: the file at its BaseURL is the stream
    if len(parts.parts) > MAX_SEGMENTS + 1:
        raise ListingError(f"the manifest lists {len(parts.parts) - 1} segments for "
                           f"representation {rep.get('id')!r}, over the limit of "
                           f"{MAX_SEGMENTS}")  # fmt: skip
    return parts


def _template(
    attributes: dict[str, str],
    timeline: ElementTree.Element | None,
    rep: ElementTree.Element,
    base: str,
    duration: float | None,
) -> Listed:
    media = attributes.get("media")
    if not media:
        raise ListingError("the manifest has a SegmentTemplate without media")
    start = whole_number(attributes.get("startNumber", "1"))
    timescale = whole_number(attributes.get("timescale", "1")) or 1
    values = {"RepresentationID": rep.get("id", ""), "Bandwidth": rep.get("bandwidth", "0")}
    if timeline is not None:
        times = list(_timeline(timeline, timescale, duration))
    else:
        step = whole_number(attributes.get("duration"))
        if not step or duration is None:
            raise ListingError("the manifest's SegmentTemplate has neither a SegmentTimeline "
                               "nor a segment duration and a period length")  # fmt: skip
        count = math.ceil(duration * timescale / step - 1e-9)
        if count > MAX_SEGMENTS:
            raise ListingError(f"the manifest lists {count} segments, over the limit of "
                               f"{MAX_SEGMENTS}")  # fmt: skip
        times = [i * step for i in range(count)]
    parts = []
    if initialization := attributes.get("initialization"):
        parts.append(absolute(_fill(initialization, values), base))
    for number, time in enumerate(times, start):
        filled = _fill(media, {**values, "Number": str(number), "Time": str(time)})
        parts.append(absolute(filled, base))
    return Listed(tuple(parts))


def _timeline(timeline: ElementTree.Element, timescale: int, duration: float | None):
    """Each segment's start time (in ``timescale`` units) as the ``S`` elements give them."""
    time = 0
    entries = _children(timeline, "S")
    count = 0
    for i, entry in enumerate(entries):
        time = whole_number(entry.get("t")) if entry.get("t") is not None else time
        step = whole_number(entry.get("d"))
        repeat = int(entry.get("r", "0"))
        if repeat < 0:  # until the next S's time, or the period's end
            nxt = entries[i + 1].get("t") if i + 1 < len(entries) else None
            end = whole_number(nxt) if nxt is not None else (
                None if duration is None else round(duration * timescale))  # fmt: skip
            if end is None or step <= 0:
                raise ListingError("the manifest's SegmentTimeline repeats to an end it does "
                                   "not give")  # fmt: skip
            repeat = math.ceil((end - time) / step) - 1
        if step <= 0 or repeat + 1 + count > MAX_SEGMENTS:
            raise ListingError(f"the manifest's SegmentTimeline lists over {MAX_SEGMENTS} "
                               "segments, or a segment of no length")  # fmt: skip
        for _ in range(repeat + 1):
            yield time
            time += step
            count += 1


def _fill(template: str, values: dict[str, str]) -> str:
    """A SegmentTemplate string with its identifiers (``$Number%05d$``) filled in."""

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        value = values.get(match[1])
        if value is None:
            raise ListingError(f"the manifest's template names ${match[1]}$, which is not read")
        return value.zfill(int(match[2])) if match[2] else value

    return _IDENTIFIER.sub(one, template)


def _segment_list(segment_list: ElementTree.Element, base: str) -> Listed:
    initialization = _children(segment_list, "Initialization")
    urls = _children(segment_list, "SegmentURL")
    files = [u.get("media") or "" for u in urls]
    ranges = [u.get("mediaRange") for u in urls]
    if initialization:
        files.insert(0, initialization[0].get("sourceURL") or "")
        ranges.insert(0, initialization[0].get("range"))
    if any(ranges):
        if len(set(files)) > 1:
            raise ListingError("the manifest lists byte ranges of several files; only byte "
                               "ranges of one file are read")  # fmt: skip
        spans = [_span(r) for r in ranges]
        check_contiguous(spans, "the manifest")
        return Listed((absolute(files[0], base),), end=sum(spans[-1]))  # (read up to there)
    return Listed(tuple(absolute(f, base) for f in files))


def _span(byte_range: str | None) -> tuple[int, int]:
    """``first-last`` (inclusive) as (offset, length); none: the whole file (-1)."""
    if not byte_range:
        return 0, -1
    first, _, last = byte_range.partition("-")
    return whole_number(first), whole_number(last) - whole_number(first) + 1
