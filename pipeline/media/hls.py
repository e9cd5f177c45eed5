"""HLS output: playlists written from a segment plan.

A segmented run publishes ``segment_NNNNN.ts`` files by rename (``segment_NNNNN.m4s`` after an
``init.mp4`` for fragmented MP4: see :mod:`carn_stream.pipeline.media.fragment`); its playlist
is generated from the plan and the segments done so far, in order and without gaps: an EVENT
playlist while segments are missing (a player can start early), ``#EXT-X-ENDLIST`` once all
are done. Durations are the plan's exact ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av

from carn_stream.pipeline.media.decode import codec_name
from carn_stream.pipeline.media.publish import publish_text

if TYPE_CHECKING:
    from carn_stream.pipeline.media.segments import SegmentPlan

PLAYLIST_NAME = "index.m3u8"
MASTER_NAME = "master.m3u8"  #: a finished folder's master playlist (its subtitles beside it)
SUBTITLE_PREFIX = "subtitles_"
#: A folder's subtitle rendition files, as :func:`subtitle_file` names them (number, kind).
SUBTITLE_NAME_RE = re.compile(rf"{SUBTITLE_PREFIX}([0-9]{{1,3}})\.(m3u8|vtt)")
AUDIO_PREFIX = "audio_"
#: A folder's audio rendition files (:func:`audio_playlist`, :func:`audio_prefix`):
#: its playlist, and its segments and ``init.mp4`` under the rendition's prefix.
AUDIO_NAME_RE = re.compile(
    rf"{AUDIO_PREFIX}([0-9]{{1,3}})(\.m3u8|_init\.mp4|_segment_[0-9]{{5,9}}\.(ts|m4s))"
)
SEGMENT_PATTERN = "segment_%05d.ts"
FRAGMENT_PATTERN = "segment_%05d.m4s"  #: a fragmented-MP4 media segment's
INIT_NAME = "init.mp4"  #: a fragmented-MP4 folder's initialisation segment
#: A segment's file name, of either kind: ASCII digits only, the whole name (``\Z``: no trailing
#: newline).
SEGMENT_NAME_RE = re.compile(r"segment_([0-9]{5,9})\.(ts|m4s)\Z")
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"  #: an HLS playlist's media type
#: Audio codecs MPEG-TS segments carry as they are (the rest is transcoded to AAC), MP3 at
#: :data:`MP3_LEAST_MP4_RATE` and up only.
SEGMENT_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3"})
#: MP3 below this rate (MPEG-2.5's 8, 11.025 and 12 kHz) has no MP4 sample entry: FFmpeg's MP4
#: muxer refuses it. Segments carry it as AAC, so that MP4 files and fragmented-MP4 folders
#: made of them can hold it.
MP3_LEAST_MP4_RATE = 16_000


def mp3_below_mp4_rates(stream: av.stream.Stream) -> bool:
    """Whether ``stream`` is MP3 at a rate MP4 cannot hold (:data:`MP3_LEAST_MP4_RATE`; an
    unknown rate is not judged)."""
    rate = stream.codec_context.sample_rate or 0
    return codec_name(stream) == "mp3" and 0 < rate < MP3_LEAST_MP4_RATE


def carried_as_is(stream: av.stream.Stream) -> bool:
    """Whether segments carry an input audio stream as it is (else transcoded to AAC)."""
    return codec_name(stream) in SEGMENT_AUDIO and not mp3_below_mp4_rates(stream)


def subtitle_file(number: int, kind: str) -> str:
    """``subtitles_N.m3u8`` (a subtitle rendition's playlist) or ``subtitles_N.vtt``."""
    return f"{SUBTITLE_PREFIX}{number}.{kind}"


def audio_playlist(number: int) -> str:
    """``audio_N.m3u8``: the playlist of the audio rendition of the input's audio stream
    ``number`` (its place among the audio streams)."""
    return f"{AUDIO_PREFIX}{number}.m3u8"


def audio_prefix(number: int) -> str:
    """``audio_N_``: what the names of that rendition's segments and ``init.mp4`` start with."""
    return f"{AUDIO_PREFIX}{number}_"


def unique_name(name: str, taken: Iterable[str]) -> str:
    """``name``, or ``name (2)``, ``name (3)``, ... where it is taken: the renditions of one
    group in a master playlist have names of their own."""
    taken = set(taken)
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name} ({n})"
    return unique


def segment_name(index: int, fragmented: bool = False) -> str:
    """``segment_00007.ts``, or for fragmented MP4 ``segment_00007.m4s``."""
    return (FRAGMENT_PATTERN if fragmented else SEGMENT_PATTERN) % index


def either_segment_index(name: str) -> int | None:
    """:func:`segment_index` of a segment file of either kind (MPEG-TS, fragmented MP4)."""
    return segment_index(name, fragmented=name.endswith(".m4s"))


def segment_media_type(fragmented: bool) -> str:
    """What HTTP calls a segment: MPEG-TS, or an ISO BMFF media segment (fragmented MP4)."""
    return "video/iso.segment" if fragmented else "video/mp2t"


def segment_index(name: str, fragmented: bool = False) -> int | None:
    """The index a segment's file name stands for, or None unless ``name`` is exactly what
    :func:`segment_name` writes for this kind (``segment_00007.ts``; no other digits, width
    or ending)."""
    match = SEGMENT_NAME_RE.match(name)
    if match is None:
        return None
    index = int(match[1])
    return index if segment_name(index, fragmented) == name else None


def playlist_text(
    durations: Iterable[float],
    target: float,
    complete: bool,
    kind: str = "EVENT",
    query: str = "",
    fragmented: bool = False,
    prefix: str = "",
) -> str:
    """An HLS media playlist for consecutive segments of the given durations (seconds).

    ``target`` is the longest segment of the whole plan, so the announced target duration
    never changes while the playlist grows. ``kind``: ``EVENT`` (a playlist that grows) or
    ``VOD`` (complete from the start). ``query`` (e.g. ``?viewer=...``) follows each segment's
    name. ``fragmented``: fragmented-MP4 segments after the folder's ``init.mp4``
    (``#EXT-X-MAP``, which needs version 6: RFC 8216, section 7). ``prefix``: what the names
    of the segments and ``init.mp4`` start with (an audio rendition's,
    :func:`audio_prefix`).
    """
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{6 if fragmented else 3}",
        f"#EXT-X-TARGETDURATION:{max(1, math.ceil(target))}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        f"#EXT-X-PLAYLIST-TYPE:{kind}",  # a type never changes; ENDLIST closes it
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    if fragmented:
        lines.append(f'#EXT-X-MAP:URI="{prefix}{INIT_NAME}{query}"')
    for index, seconds in enumerate(durations):
        lines += [f"#EXTINF:{seconds:.6f},", prefix + segment_name(index, fragmented) + query]
    if complete:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def plan_playlist_text(
    plan: SegmentPlan, query: str = "", fragmented: bool = False, prefix: str = ""
) -> str:
    """The complete (``VOD``) media playlist of all of a plan's segments, whether made yet or
    not (:func:`playlist_text` for the rest)."""
    durations = [s.duration for s in plan.segments]
    return playlist_text(durations, plan.max_duration, complete=True, kind="VOD", query=query,
                         fragmented=fragmented, prefix=prefix)  # fmt: skip


def write_playlist(
    folder: Path, durations: list[float], target: float, complete: bool, fragmented: bool = False
) -> Path:
    """Replace ``folder/index.m3u8`` atomically (a reader never sees half a playlist)."""
    text = playlist_text(durations, target, complete, fragmented=fragmented)
    return publish_text(folder / PLAYLIST_NAME, text)


def is_complete(folder: Path) -> bool:
    """True once the playlist is final (ends with ``#EXT-X-ENDLIST``)."""
    playlist = folder / PLAYLIST_NAME
    return playlist.is_file() and "#EXT-X-ENDLIST" in playlist.read_text()


@dataclass(frozen=True)
class Variant:
    """One rendition in a master playlist."""

    uri: str  #: its media playlist, relative to the master
    bandwidth: int  #: peak bits per second
    width: int
    height: int
    codecs: str  #: RFC 6381 codec strings, comma-separated
    frame_rate: float | None = None
    video_range: str = "SDR"  #: SDR, PQ or HLG (:func:`~carn_stream.pipeline.colour.video_range`)


@dataclass(frozen=True)
class SubtitleMedia:
    """A subtitle rendition in a master playlist (WebVTT, one playlist per language)."""

    uri: str  #: its media playlist, relative to the master
    name: str
    language: str | None = None
    default: bool = False
    forced: bool = False


@dataclass(frozen=True)
class AudioMedia:
    """An audio rendition in a master playlist: one of the input's audio streams."""

    uri: str  #: its media playlist
    name: str
    language: str | None = None
    default: bool = False
    channels: int | None = None


SUBTITLE_GROUP = "subs"
AUDIO_GROUP = "audio"
#: ISO 639-2 codes (as Matroska and MP4 tag streams) of common languages -> their two-letter
#: ISO 639-1 codes, the form a language tag takes where one exists (RFC 5646), and their names
#: in themselves, as a player's menu of languages shows them.
_LANGUAGES = {
    "ara": ("ar", "العربية"), "chi": ("zh", "中文"), "zho": ("zh", "中文"),
    "cze": ("cs", "Čeština"), "ces": ("cs", "Čeština"), "dan": ("da", "Dansk"),
    "dut": ("nl", "Nederlands"), "nld": ("nl", "Nederlands"), "eng": ("en", "English"),
    "fin": ("fi", "Suomi"), "fra": ("fr", "Français"), "fre": ("fr", "Français"),
    "ger": ("de", "Deutsch"), "deu": ("de", "Deutsch"), "gre": ("el", "Ελληνικά"),
    "ell": ("el", "Ελληνικά"), "heb": ("he", "עברית"), "hin": ("hi", "हिन्दी"),
    "hun": ("hu", "Magyar"), "ind": ("id", "Bahasa Indonesia"), "ita": ("it", "Italiano"),
    "jpn": ("ja", "日本語"), "kor": ("ko", "한국어"), "nor": ("no", "Norsk"),
    "pol": ("pl", "Polski"), "por": ("pt", "Português"), "rum": ("ro", "Română"),
    "ron": ("ro", "Română"), "rus": ("ru", "Русский"), "spa": ("es", "Español"),
    "swe": ("sv", "Svenska"), "tha": ("th", "ไทย"), "tur": ("tr", "Türkçe"),
    "ukr": ("uk", "Українська"), "vie": ("vi", "Tiếng Việt"),
}  # fmt: skip


def language_tag(language: str) -> str:
    """A stream's language as a language tag: ``eng`` -> ``en``; others as given."""
    return _LANGUAGES.get(language.lower(), (language,))[0]


def track_name(title: str | None, language: str | None, fallback: str) -> str:
    """What a rendition is called in a player's menu: the stream's title, else its language's
    name in itself (``fra`` -> ``Français``; a language not known here by its code), else
    ``fallback``."""
    if title:
        return title
    if language:
        known = _LANGUAGES.get(language.lower())
        return known[1] if known else language
    return fallback


def _quoted(text: str) -> str:
    """A quoted-string attribute value (no double quote, no line break inside)."""
    return '"' + text.replace('"', "'").replace("\n", " ").replace("\r", " ") + '"'


def with_codecs(codecs: str, group: Iterable[str | None]) -> str:
    """A variant's codec strings with those of an audio group it names that it lacks; "" where
    any is unknown (a list that leaves one out misleads a player)."""
    group = list(group)
    if not codecs or None in group:
        return "" if group else codecs
    tags = codecs.split(",")
    return ",".join(tags + [t for t in dict.fromkeys(group) if t not in tags])


_AUDIO_MEDIA = "#EXT-X-MEDIA:TYPE=AUDIO,"  #: the start of an audio rendition's line


def with_default_audio(text: str, uri: str) -> str:
    """The master playlist ``text`` with its audio rendition at ``uri`` as the group's default
    (``DEFAULT=YES``; the others ``NO``): what a player that offers no choice of its own
    plays. Raises LookupError where it names no such audio rendition."""
    lines = text.split("\n")
    audio = [i for i, line in enumerate(lines) if line.startswith(_AUDIO_MEDIA)]
    named = f",URI={_quoted(uri)}"
    if not any(named in lines[i] for i in audio):
        raise LookupError(f"no audio rendition {uri!r}")
    for i in audio:  # (the default is also chosen on its own: AUTOSELECT must say so)
        flags = ",DEFAULT=YES,AUTOSELECT=YES," if named in lines[i] else r",DEFAULT=NO,\1,"
        lines[i] = re.sub(r",DEFAULT=(?:YES|NO),(AUTOSELECT=(?:YES|NO)),", flags, lines[i], count=1)
    return "\n".join(lines)


def master_playlist_text(
    variants: Iterable[Variant],
    subtitles: Sequence[SubtitleMedia] = (),
    audio: Sequence[AudioMedia] = (),
) -> str:
    """An HLS master playlist; players start with the first variant. Subtitle renditions,
    when there are any, are one group every variant names; so are audio renditions (the first
    is the default). Where any variant is HDR, every
    variant says its dynamic range (``VIDEO-RANGE``), as Apple's players require; an SDR-only
    playlist leaves it out (SDR is what its absence means)."""
    variants = list(variants)
    ranges = any(v.video_range != "SDR" for v in variants)
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    languages: set[str | None] = set()
    for track in audio:
        attributes = ["TYPE=AUDIO", f"GROUP-ID={_quoted(AUDIO_GROUP)}",
                      f"NAME={_quoted(track.name)}"]  # fmt: skip
        if track.language:
            attributes.append(f"LANGUAGE={_quoted(language_tag(track.language))}")
        # A player chooses by language on its own among the first of each (a second stream
        # in one language, a commentary, is chosen by name).
        chosen = track.default or track.language not in languages
        languages.add(track.language)
        attributes += [f"DEFAULT={'YES' if track.default else 'NO'}",
                       f"AUTOSELECT={'YES' if chosen else 'NO'}"]  # fmt: skip
        if track.channels:
            attributes.append(f'CHANNELS="{track.channels}"')
        attributes.append(f"URI={_quoted(track.uri)}")
        lines.append("#EXT-X-MEDIA:" + ",".join(attributes))
    for media in subtitles:
        attributes = [
            "TYPE=SUBTITLES",
            f"GROUP-ID={_quoted(SUBTITLE_GROUP)}",
            f"NAME={_quoted(media.name)}",
        ]
        if media.language:
            attributes.append(f"LANGUAGE={_quoted(language_tag(media.language))}")
        attributes += [
            f"DEFAULT={'YES' if media.default else 'NO'}",
            "AUTOSELECT=YES",
            f"FORCED={'YES' if media.forced else 'NO'}",
            f"URI={_quoted(media.uri)}",
        ]
        lines.append("#EXT-X-MEDIA:" + ",".join(attributes))
    for v in variants:
        attributes = [f"BANDWIDTH={max(1, v.bandwidth)}", f"RESOLUTION={v.width}x{v.height}"]
        if v.codecs:  # (unknown: left out rather than incomplete)
            attributes.append(f'CODECS="{v.codecs}"')
        if v.frame_rate:
            attributes.append(f"FRAME-RATE={v.frame_rate:.3f}")
        if ranges:
            attributes.append(f"VIDEO-RANGE={v.video_range}")
        if audio:
            attributes.append(f"AUDIO={_quoted(AUDIO_GROUP)}")
        if subtitles:
            attributes.append(f"SUBTITLES={_quoted(SUBTITLE_GROUP)}")
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attributes), v.uri]
    return "\n".join(lines) + "\n"


def subtitle_playlist_text(duration: float, uri: str) -> str:
    """A subtitle rendition's playlist: one WebVTT file for the whole video."""
    return "\n".join([
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{max(1, math.ceil(duration))}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        f"#EXTINF:{duration:.6f},",
        uri,
        "#EXT-X-ENDLIST",
    ]) + "\n"  # fmt: skip
