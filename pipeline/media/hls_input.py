"""HLS as an input: reading a playlist someone else wrote (RFC 8216) into a
:class:`~carn_stream.pipeline.media.listing.Listing` of what to fetch.

A master playlist offers variants; the input is the one with the most pixels (then the highest
bandwidth), since upscaling starts from the best picture there is, with every audio rendition
of its group. A media playlist lists the segments, which join by concatenation: MPEG-TS
segments as they are, fragmented MP4 ones after their initialization section. What cannot be
joined that way is refused, saying why: live playlists (no end yet), splices
(discontinuities), more than one initialization section, byte ranges of several files, audio
in packed (raw ADTS/AC-3) segments, and every encryption but whole-segment AES-128 with its key
at a URI (``METHOD=AES-128``, which is decrypted as the parts join: sample encryption and key
systems are DRM's).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from carn_stream.pipeline.media.listing import (
    AUDIO_CODEC_TAGS,
    MAX_AUDIO_APART,
    MAX_SEGMENTS,
    MAX_SUBTITLES,
    Listed,
    ListedAudio,
    ListedText,
    Listing,
    ListingError,
    PartKey,
    absolute,
    check_contiguous,
    whole_number,
)

#: What every playlist starts with; a downloaded input that does is one.
SIGNATURE = b"#EXTM3U"
#: Suffixes of packed audio segments (raw ADTS, AC-3, MP3 with an ID3 timestamp), which carry
#: their time only in the ID3 tag and cannot be joined to a video by concatenation.
PACKED_AUDIO_SUFFIXES = frozenset({".aac", ".ac3", ".ec3", ".mp3"})

_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
#: An initialization vector: a hexadecimal number of up to 128 bits.
_IV = re.compile(r"0[xX][0-9a-fA-F]{1,32}")


def is_playlist(head: bytes) -> bool:
    """Whether a file starting with ``head`` is an HLS playlist (a UTF-8 BOM is allowed)."""
    return head.removeprefix(b"\xef\xbb\xbf").startswith(SIGNATURE)


def attributes(text: str) -> dict[str, str]:
    """A tag's attribute list (``BANDWIDTH=1280000,CODECS="avc1.4d401f,mp4a.40.2"``), with
    quoted values unquoted."""
    return {key: value.strip('"') for key, value in _ATTRIBUTE.findall(text)}


@dataclass(frozen=True)
class Variant:
    """One ``#EXT-X-STREAM-INF`` of a master playlist."""

    uri: str
    bandwidth: int = 0
    width: int = 0
    height: int = 0
    codecs: str = ""
    audio_group: str | None = None
    subtitle_group: str | None = None

    @property
    def audio_only(self) -> bool:
        """It names codecs, and none of them is a video codec."""
        names = [c.strip() for c in self.codecs.split(",") if c.strip()]
        return bool(names) and all(n.lower().startswith(AUDIO_CODEC_TAGS) for n in names)


@dataclass(frozen=True)
class AudioRendition:
    """One ``#EXT-X-MEDIA:TYPE=AUDIO`` of a master playlist (``uri`` None: in the variant)."""

    group: str
    uri: str | None
    name: str = ""
    language: str | None = None
    default: bool = False


@dataclass(frozen=True)
class SubtitleRendition:
    """One ``#EXT-X-MEDIA:TYPE=SUBTITLES`` of a master playlist."""

    group: str
    uri: str
    name: str = ""
    language: str | None = None
    default: bool = False


@dataclass(frozen=True)
class MasterPlaylist:
    variants: tuple[Variant, ...]
    audio: tuple[AudioRendition, ...] = ()
    subtitles: tuple[SubtitleRendition, ...] = ()

    def best(self) -> Variant:
        """The variant to upscale: the most pixels, then the highest bandwidth; audio-only
        variants only where there is nothing else."""
        pictures = [v for v in self.variants if not v.audio_only] or list(self.variants)
        return max(pictures, key=lambda v: (v.width * v.height, v.bandwidth))

    def audio_of(self, variant: Variant) -> list[AudioRendition]:
        """The audio renditions of ``variant``'s group, the default first: those with playlists
        of their own, and the one without (the audio its own segments carry, RFC 8216
        4.3.4.2.1; the default if several are). None with a playlist: its audio, if any, is in
        its own segments, as it is."""
        group = [a for a in self.audio if a.group == variant.audio_group]
        inside = min((a for a in group if not a.uri), key=lambda a: not a.default, default=None)
        chosen = [a for a in group if a.uri or a is inside]
        return sorted(chosen, key=lambda a: not a.default)

    def subtitles_of(self, variant: Variant) -> list[SubtitleRendition]:
        """The subtitle renditions of ``variant``'s group, the default first."""
        group = [s for s in self.subtitles if s.group == variant.subtitle_group]
        return sorted(group, key=lambda s: not s.default)


@dataclass(frozen=True)
class Part:
    """A file to fetch: a segment, or an initialization section."""

    uri: str
    byte_range: tuple[int, int] | None = None  #: (length, offset)
    key: PartKey | None = None  #: how it is encrypted (None: it is not)


@dataclass(frozen=True)
class Key:
    """An ``#EXT-X-KEY`` with ``METHOD=AES-128``: the key's URI, and the initialization vector
    (None: each segment's media sequence number is its IV)."""

    uri: str
    iv: bytes | None = None

    def of(self, sequence: int | None) -> PartKey:
        """The key of the segment with media sequence number ``sequence`` (None: the
        playlist's is malformed)."""
        if self.iv is not None:
            return PartKey(self.uri, self.iv)
        if sequence is None or not 0 <= sequence < 1 << 128:
            raise ListingError("an #EXT-X-KEY without an IV, and no valid "
                               "#EXT-X-MEDIA-SEQUENCE to take it from")  # fmt: skip
        return PartKey(self.uri, sequence.to_bytes(16, "big"))


@dataclass(frozen=True)
class MediaPlaylist:
    segments: tuple[Part, ...]
    maps: tuple[Part, ...] = ()  #: the initialization sections named, in order
    ended: bool = False  #: ``#EXT-X-ENDLIST`` (or a VOD playlist type): nothing more comes
    unread_key: str | None = None  #: the first encryption not read (how it is named)
    discontinuities: int = 0

    def parts(self, what: str) -> Listed:
        """The files whose bytes, in order, are the whole stream: the initialization section
        (if any) then every segment, or the one file all of them are byte ranges of, up to the
        end of the last. ``what`` names the stream in refusals."""
        self.check(what)
        listed = (*self.maps[:1], *self.segments)
        ranged = [p for p in (*self.maps, *self.segments) if p.byte_range is not None]
        keys = tuple(p.key for p in listed) if any(p.key for p in listed) else ()
        if ranged and keys:
            raise ListingError(f"the {what} playlist lists encrypted byte ranges; only whole "
                               "encrypted segments are read")  # fmt: skip
        if ranged:
            files = {p.uri for p in (*self.maps, *self.segments)}
            if len(files) > 1:
                raise ListingError(f"the {what} playlist lists byte ranges of several files; "
                                   "only byte ranges of one file are read")  # fmt: skip
            spans = [(p.byte_range[1], p.byte_range[0]) if p.byte_range else (0, -1)
                     for p in listed]  # fmt: skip
            check_contiguous(spans, f"the {what} playlist")
            return Listed((next(iter(files)),), end=sum(spans[-1]))
        return Listed(tuple(p.uri for p in listed), keys=keys)

    def check(self, what: str) -> None:
        """Refuse what cannot be joined by concatenation, saying why."""
        if not self.ended:
            raise ListingError(
                f"the {what} playlist is live (it has no #EXT-X-ENDLIST yet); only finished "
                "(video on demand) HLS playlists are read"
            )
        if self.unread_key is not None:
            raise ListingError(f"the {what} playlist is encrypted ({self.unread_key}); of "
                               "encrypted HLS, only METHOD=AES-128 with its key at a URI is "
                               "read")  # fmt: skip
        if self.discontinuities:
            raise ListingError(
                f"the {what} playlist splices separate streams ({self.discontinuities} "
                "#EXT-X-DISCONTINUITY); such playlists are not read"
            )
        if len(set(self.maps)) > 1:
            raise ListingError(f"the {what} playlist changes its initialization section "
                               "(#EXT-X-MAP); such playlists are not read")  # fmt: skip
        if not self.segments:
            raise ListingError(f"the {what} playlist lists no segments")
        if len(self.segments) > MAX_SEGMENTS:
            raise ListingError(f"the {what} playlist lists {len(self.segments)} segments, over "
                                f"the limit of {MAX_SEGMENTS}")  # fmt: skip


def parse_playlist(text: str, url: str) -> MasterPlaylist | MediaPlaylist:
    """The playlist ``text`` fetched from ``url`` (its URIs made absolute against it)."""
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    lines = [line for line in lines if line]
    if not lines or lines[0] != "#EXTM3U":
        raise ListingError("not an HLS playlist (it does not start with #EXTM3U)")
    if any(line.startswith("#EXT-X-STREAM-INF") for line in lines):
        return _master(lines, url)
    return _media(lines, url)


def _master(lines: list[str], url: str) -> MasterPlaylist:
    variants: list[Variant] = []
    audio: list[AudioRendition] = []
    subtitles: list[SubtitleRendition] = []
    pending: dict[str, str] | None = None
    for line in lines[1:]:
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = attributes(line.partition(":")[2])
        elif line.startswith("#EXT-X-MEDIA:"):
            tag = attributes(line.partition(":")[2])
            if tag.get("TYPE") == "AUDIO":
                uri = tag.get("URI")
                audio.append(AudioRendition(
                    group=tag.get("GROUP-ID", ""), uri=absolute(uri, url) if uri else None,
                    name=tag.get("NAME", ""), language=tag.get("LANGUAGE"),
                    default=tag.get("DEFAULT") == "YES",
                ))  # fmt: skip
            elif tag.get("TYPE") == "SUBTITLES" and tag.get("URI"):
                subtitles.append(SubtitleRendition(
                    group=tag.get("GROUP-ID", ""), uri=absolute(tag["URI"], url),
                    name=tag.get("NAME", ""), language=tag.get("LANGUAGE"),
                    default=tag.get("DEFAULT") == "YES",
                ))  # fmt: skip
        elif not line.startswith("#") and pending is not None:
            width, _, height = pending.get("RESOLUTION", "0x0").partition("x")
            variants.append(Variant(
                uri=absolute(line, url), bandwidth=whole_number(pending.get("BANDWIDTH")),
                width=whole_number(width), height=whole_number(height),
                codecs=pending.get("CODECS", ""), audio_group=pending.get("AUDIO"),
                subtitle_group=pending.get("SUBTITLES"),
            ))  # fmt: skip
            pending = None
    if not variants:
        raise ListingError("the master playlist lists no variant")
    return MasterPlaylist(tuple(variants), tuple(audio), tuple(subtitles))


def _media(lines: list[str], url: str) -> MediaPlaylist:
    segments: list[Part] = []
    maps: list[Part] = []
    ended, unread_key, discontinuities, sequence = False, None, 0, 0
    key: Key | None = None  # what encrypts the segments from here on
    byte_range: str | None = None  # the next segment's (``LENGTH[@OFFSET]``)
    next_offset: dict[str, int] = {}  # where a range without an offset starts, per file
    for line in lines[1:]:
        tag, _, value = line.partition(":")
        if tag == "#EXT-X-ENDLIST" or (tag == "#EXT-X-PLAYLIST-TYPE" and value == "VOD"):
            ended = True
        elif tag == "#EXT-X-DISCONTINUITY":
            discontinuities += 1
        elif tag == "#EXT-X-MEDIA-SEQUENCE":  # (needed only by a key without an IV)
            sequence = int(value) if value.isdigit() else None
        elif tag == "#EXT-X-KEY":
            key, unread = _key(attributes(value), url)
            unread_key = unread_key or unread
        elif tag == "#EXT-X-MAP":
            tag_attributes = attributes(value)
            uri = absolute(tag_attributes.get("URI", ""), url)
            ranged = tag_attributes.get("BYTERANGE")
            if key is not None and key.iv is None:  # (RFC 8216 4.3.2.4: required there)
                raise ListingError("an encrypted #EXT-X-MAP has no IV in its #EXT-X-KEY")
            maps.append(Part(uri, _byte_range(ranged, uri, next_offset) if ranged else None,
                             key.of(None) if key else None))  # fmt: skip
        elif tag == "#EXT-X-BYTERANGE":
            byte_range = value
        elif not line.startswith("#"):
            uri = absolute(line, url)
            segments.append(Part(uri, _byte_range(byte_range, uri, next_offset)
                                 if byte_range else None, key.of(sequence) if key else None))
            byte_range = None
            sequence = None if sequence is None else sequence + 1
    return MediaPlaylist(tuple(segments), tuple(maps), ended, unread_key, discontinuities)


#: The key format of a key that is the key itself (RFC 8216 4.3.2.4); others are key systems'.
IDENTITY = "identity"


def _key(tag: dict[str, str], url: str) -> tuple[Key | None, str | None]:
    """What an ``#EXT-X-KEY`` encrypts the segments after it with (None: nothing), and how it
    is named if that is not read."""
    method = tag.get("METHOD", "NONE")
    if method == "NONE":
        return None, None
    if method != "AES-128":
        return None, f"METHOD={method}"
    if tag.get("KEYFORMAT", IDENTITY) != IDENTITY:
        return None, f"KEYFORMAT={tag['KEYFORMAT']}"
    if not tag.get("URI"):
        raise ListingError("an #EXT-X-KEY with METHOD=AES-128 names no URI")
    iv = tag.get("IV")
    if iv is None:
        return Key(absolute(tag["URI"], url)), None
    if not _IV.fullmatch(iv):
        raise ListingError(f"an #EXT-X-KEY has a malformed IV: {iv!r}")
    return Key(absolute(tag["URI"], url), int(iv[2:], 16).to_bytes(16, "big")), None


def _byte_range(text: str, uri: str, next_offset: dict[str, int]) -> tuple[int, int]:
    """``LENGTH[@OFFSET]`` of ``uri`` as (length, offset); without an offset, the range starts
    where the file's last one ended."""
    length_text, at, offset_text = text.partition("@")
    length = whole_number(length_text)
    offset = whole_number(offset_text) if at else next_offset.get(uri, 0)
    next_offset[uri] = offset + length
    return length, offset


def _suffix_among(uri: str, suffixes: frozenset[str]) -> bool:
    """Whether the path of ``uri`` ends in one of ``suffixes`` (as players tell segments apart)."""
    return Path(urllib.parse.urlsplit(uri).path).suffix.lower() in suffixes


def packed_audio(uri: str) -> bool:
    """Whether a segment is packed audio (raw ADTS, AC-3 or MP3), by its name's suffix."""
    return _suffix_among(uri, PACKED_AUDIO_SUFFIXES)


#: Reads the text at a URL; returns it and the URL it came from in the end (after redirects).
ReadText = Callable[[str], tuple[str, str]]


def hls_listing(text: str, url: str, read: ReadText) -> Listing:
    """What the playlist ``text`` (from ``url``) lists to fetch: a media playlist's segments,
    or a master playlist's variant with the most pixels, its audio renditions and its WebVTT
    subtitle renditions (their media playlists read with ``read``)."""
    parsed = parse_playlist(text, url)
    if isinstance(parsed, MediaPlaylist):
        return Listing(parsed.parts("media"))
    variant = parsed.best()
    renditions = parsed.audio_of(variant)
    apart = sum(1 for r in renditions if r.uri)
    if apart > MAX_AUDIO_APART:  # (before any of them is read)
        raise ListingError(f"the variant's group has {apart} audio renditions, over the limit "
                           f"of {MAX_AUDIO_APART}")  # fmt: skip
    video = _read_media(variant.uri, read).parts("variant's")
    audio = []
    for number, rendition in enumerate(renditions):
        if rendition.uri is None:  # in the variant's own segments
            audio.append(ListedAudio(None, rendition.name, rendition.language))
            continue
        what = f"audio rendition {rendition.name or number}'s"
        listed = _read_media(rendition.uri, read).parts(what)
        if any(packed_audio(p) for p in listed.parts):
            raise ListingError(f"the {what} segments are packed audio (raw ADTS, AC-3 or MP3), "
                               "which is not read")  # fmt: skip
        audio.append(ListedAudio(listed, rendition.name, rendition.language))
    subtitles = []
    for number, rendition in enumerate(parsed.subtitles_of(variant)[:MAX_SUBTITLES]):
        what = f"subtitle rendition {rendition.name or number}'s"
        try:
            listed = _read_media(rendition.uri, read).parts(what)
        except ListingError:  # (live, spliced...: subtitles are not worth refusing the video)
            continue
        if listed.end is None and not listed.keys and all(map(webvtt_segment, listed.parts)):
            subtitles.append(ListedText(listed, rendition.name, rendition.language))
        # (else not WebVTT segments, e.g. IMSC in fragmented MP4: left out, as players may)
    return Listing(video, tuple(audio), tuple(subtitles))


#: Suffixes of WebVTT segments.
WEBVTT_SUFFIXES = frozenset({".vtt", ".webvtt"})


def webvtt_segment(uri: str) -> bool:
    """Whether a subtitle segment is WebVTT, by its name's suffix."""
    return _suffix_among(uri, WEBVTT_SUFFIXES)


def _read_media(uri: str, read: ReadText) -> MediaPlaylist:
    """The media playlist at ``uri``."""
    parsed = parse_playlist(*read(uri))
    if not isinstance(parsed, MediaPlaylist):
        raise ListingError("a variant's playlist is itself a master playlist")
    return parsed
