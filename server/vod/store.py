"""Videos served on request, in the service's SQLite file: the source, its plan and renditions.

What is cached of each rendition is not recorded here: the cache folder is the record (a
segment exists once its file is published), so the store holds only what ingest decided and
the state of the video's fine-tune.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from carn_stream.pipeline.media.hls_audio import AudioStream
from carn_stream.pipeline.media.segments import SegmentPlan
from carn_stream.server.database import Database

log = logging.getLogger(__name__)

TUNE_STATES = ("off", "queued", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    url TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    plan TEXT NOT NULL,
    renditions TEXT NOT NULL,
    tune_state TEXT NOT NULL DEFAULT 'off',
    weights TEXT,
    psnr_generic REAL,
    psnr_tuned REAL,
    tune_error TEXT
);
"""


class Rendition(BaseModel):
    """One variant of a video's master playlist."""

    name: str = Field(description="`original`, or `x2`, `x4`... for the upscaled ones")
    scale: int = Field(description="1 for the original")
    width: int
    height: int
    codecs: str = Field(description="RFC 6381 codec strings, as the master playlist gives them")
    bandwidth: int = Field(description="bits per second estimated at ingest")

    @property
    def fragmented(self) -> bool:
        """Its segments are fragmented MP4 after an ``init.mp4`` (HEVC, as Apple's HLS
        authoring specification asks), not MPEG-TS."""
        return self.codecs.startswith(("hvc1.", "hev1."))


class Storage(BaseModel):
    """How a video is stored: at 1/``scale`` of the source's size, encoded with ``codec`` at
    ``crf``, served at the source's size by upscaling with the title's own model."""

    scale: int
    codec: str
    crf: int
    keep_source: bool = Field(description="the source is kept after the title's model is made")
    source_bytes: int = Field(description="bytes of the source as fetched")
    stored_bytes: int = Field(description="bytes of the stored low-resolution copy")
    source_kept: bool = Field(description="the source is still on disk")
    source_file: str = Field("", exclude=True)  #: server path: never shown

    @property
    def saving(self) -> float:
        """The fraction of the source's bytes the stored copy saves."""
        return 1 - self.stored_bytes / self.source_bytes if self.source_bytes else 0.0


def rendition_name(scale: int) -> str:
    return "original" if scale == 1 else f"x{scale}"


ORIGINAL = rendition_name(1)  #: the rendition whose segments are the input's packets copied


@dataclass(frozen=True)
class OfferedAudio:
    """A video's audio renditions, decided once per plan: the input's audio streams offered,
    in order (none: the master playlist has no audio group), and the busiest one's peak rate
    (bits per second: what a player of a rendition fetches on top of the video's segments)."""

    streams: tuple[AudioStream, ...] = ()
    peak_rate: float = 0.0


_OFFERED_AUDIO = TypeAdapter(OfferedAudio)


@dataclass
class Video:
    id: str
    url: str
    source: Path  #: the input file the segments are made from
    created_at: float
    plan: SegmentPlan
    renditions: list[Rendition]
    tune_state: str = "off"
    weights: str | None = None  #: the video's own weights once tuned (a models-folder name)
    psnr_generic: float | None = None
    psnr_tuned: float | None = None
    tune_error: str | None = None
    storage: Storage | None = None  #: stored as a low-resolution copy (else as fetched)
    #: frames flagged interlaced are made progressive (None: a video from before the choice,
    #: which follows the service's setting)
    deinterlace: bool | None = None
    #: its audio renditions (None: not decided yet, a video from before they were recorded)
    audio: OfferedAudio | None = None

    def rendition(self, name: str) -> Rendition | None:
        return next((r for r in self.renditions if r.name == name), None)


class VideoStore:
    """Videos, in the service's database beside the jobs; safe to use from several threads."""

    def __init__(self, database: Path | Database) -> None:
        """``database``: the service's database, or the path of a file to open."""
        self.database = Database.of(database)
        self.database.use(_SCHEMA, {"videos": {"storage": "TEXT", "deinterlace": "INTEGER",
                                                "audio": "TEXT"}})
        self._db = self.database.connection
        self._lock = self.database.lock

    def close(self) -> None:
        self.database.release()

    @staticmethod
    def _video(row: sqlite3.Row) -> Video:
        data = dict(row)
        data.pop("seq")
        data["source"] = Path(data["source"])
        data["plan"] = SegmentPlan.from_dict(json.loads(data["plan"]))
        data["renditions"] = [Rendition.model_validate(r) for r in json.loads(data["renditions"])]
        storage = data.pop("storage", None)
        data["storage"] = Storage.model_validate_json(storage) if storage else None
        if data.get("deinterlace") is not None:
            data["deinterlace"] = bool(data["deinterlace"])
        data["audio"] = _offered_audio(data["id"], data.get("audio"))
        return Video(**data)

    def create(self, url: str, source: Path, plan: SegmentPlan, renditions: list[Rendition],
               tune: bool, video_id: str | None = None,
               storage: Storage | None = None, deinterlace: bool = True,
               audio: OfferedAudio | None = None) -> Video:  # fmt: skip
        video = Video(
            id=video_id or uuid.uuid4().hex, url=url, source=source, created_at=time.time(),
            plan=plan, renditions=renditions, tune_state="queued" if tune else "off",
            storage=storage, deinterlace=deinterlace, audio=audio,
        )  # fmt: skip
        with self._lock:
            self._db.execute(
                "INSERT INTO videos (id, url, source, created_at, plan, renditions, tune_state, "
                "storage, deinterlace, audio) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (video.id, url, str(source), video.created_at, json.dumps(plan.to_dict()),
                 json.dumps([r.model_dump() for r in renditions]), video.tune_state,
                 _storage_json(storage), int(deinterlace), _audio_json(audio)),
            )  # fmt: skip
        return video

    def set_plan(
        self, video_id: str, plan: SegmentPlan, renditions: list[Rendition],
        audio: OfferedAudio | None = None,
    ) -> None:  # fmt: skip
        """Replace a video's plan, renditions and audio renditions (planned again after an
        upgrade)."""
        with self._lock:
            self._db.execute(
                "UPDATE videos SET plan = ?, renditions = ?, audio = ? WHERE id = ?",
                (json.dumps(plan.to_dict()), json.dumps([r.model_dump() for r in renditions]),
                 _audio_json(audio), video_id),
            )  # fmt: skip

    def set_audio(self, video_id: str, audio: OfferedAudio) -> None:
        """Record a video's audio renditions (decided for a video from before they were)."""
        with self._lock:
            self._db.execute("UPDATE videos SET audio = ? WHERE id = ?",
                             (_audio_json(audio), video_id))  # fmt: skip

    def set_storage(self, video_id: str, storage: Storage) -> None:
        with self._lock:
            self._db.execute("UPDATE videos SET storage = ? WHERE id = ?",
                             (_storage_json(storage), video_id))  # fmt: skip

    @classmethod
    def _readable(cls, row: sqlite3.Row) -> Video | None:
        """The video a row holds; None (logged) for a row this version cannot read: it is
        neither listed nor served, and can still be deleted."""
        try:
            return cls._video(row)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("video %s cannot be read: %s: %s", row["id"], type(exc).__name__, exc)
            return None

    def get(self, video_id: str) -> Video | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM videos WHERE id = ?", (video_id,)).fetchone()
        return self._readable(row) if row else None

    def list(self, offset: int = 0, limit: int = 50) -> tuple[list[Video], int]:
        """Newest first; returns (page, total)."""
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
            rows = self._db.execute(
                "SELECT * FROM videos ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        videos = [self._readable(r) for r in rows]
        return [v for v in videos if v is not None], total

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM videos")]

    def delete(self, video_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM videos WHERE id = ?", (video_id,)).rowcount > 0

    def unfinished_tunes(self) -> list[str]:
        """Videos whose fine-tune was queued or running (when the service stopped)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM videos WHERE tune_state IN ('queued', 'running')"
            ).fetchall()
        return [r["id"] for r in rows]

    def set_tune(self, video_id: str, state: str, **values: object) -> None:
        """Record the fine-tune's state and any of weights, psnr_generic, psnr_tuned, tune_error."""
        allowed = {"weights", "psnr_generic", "psnr_tuned", "tune_error"}
        if state not in TUNE_STATES or not set(values) <= allowed:
            raise ValueError(f"bad tune update {state!r} {sorted(values)}")
        columns = ["tune_state = ?", *(f"{k} = ?" for k in values)]
        with self._lock:
            self._db.execute(
                f"UPDATE videos SET {', '.join(columns)} WHERE id = ?",
                (state, *values.values(), video_id),
            )


def _storage_json(storage: Storage | None) -> str | None:
    """The record as stored: the server-side path included (the API leaves it out)."""
    return None if storage is None else json.dumps(storage.model_dump() | {
        "source_file": storage.source_file})


def _audio_json(audio: OfferedAudio | None) -> str | None:
    return None if audio is None else _OFFERED_AUDIO.dump_json(audio).decode()


def _offered_audio(video_id: str, stored: str | None) -> OfferedAudio | None:
    """The audio renditions a row records; None where it records none, or none this version
    can read (logged: they are decided again)."""
    if not stored:
        return None
    try:
        return _OFFERED_AUDIO.validate_json(stored)
    except ValidationError as exc:
        log.warning("video %s: its audio renditions are decided again: %s", video_id, exc)
        return None
