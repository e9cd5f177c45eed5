"""Videos served on request: ingested once, each rendition's segments made when players ask.

Ingest fetches the input with the jobs' safety rules and limits, plans it as segments (no
decoding) and describes its renditions: the original (segments remuxed, nothing upscaled) and
one per scale. A segment request is served from the cache when it is there; otherwise it is
made now through the segment executor, and every request for the same segment meanwhile waits
on that one computation. After each request the next few segments of the same rendition are
made ahead (prefetch), one after the other; a request elsewhere (a seek) drops prefetch work
that has not started and starts there. Segments a player waits for take the executor's slots
and the inference worker before prefetch work, and both before batch jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from carn_stream.model.named_weights import tuned_name
from carn_stream.model.tune_report import TuneReport
from carn_stream.pipeline.colour import video_range
from carn_stream.pipeline.errors import OutputError, PipelineError
from carn_stream.pipeline.execution.executors import PlanRequest, SegmentExecutor, SegmentTask
from carn_stream.pipeline.execution.slots import Slots, Ticket
from carn_stream.pipeline.frames import quarter_turns, upscaled_size
from carn_stream.pipeline.media.decode import display_rotation
from carn_stream.pipeline.media.encode import EncoderOptions
from carn_stream.pipeline.media.fragment import publish_fragment, publish_init
from carn_stream.pipeline.media.hls import (
    INIT_NAME,
    PLAYLIST_NAME,
    Variant,
    master_playlist_text,
    plan_playlist_text,
    segment_name,
    with_codecs,
)
from carn_stream.pipeline.media.remux import RemuxTask
from carn_stream.pipeline.media.renditions import (
    encoder_tag,
    source_codecs,
    upscaled_audio_tag,
)
from carn_stream.pipeline.media.segments import SegmentPlan, segments_show_their_start
from carn_stream.pipeline.priorities import Priority
from carn_stream.pipeline.run import FrameReport, PipelineOptions
from carn_stream.server.disk import MIB, disk_space
from carn_stream.server.inputs.exposure import public_url, redact_paths
from carn_stream.server.inputs.fetch import fetch, validate_url
from carn_stream.server.limits import INPUT_NAME, Intake
from carn_stream.server.metrics import Metrics
from carn_stream.server.streaming import OpenFile, Turns
from carn_stream.server.vod.audio import VideoAudio, offered_audio
from carn_stream.server.vod.cache import Key, SegmentCache
from carn_stream.server.vod.children import run_child
from carn_stream.server.vod.media import viewer_query
from carn_stream.server.vod.playheads import Head, Playheads
from carn_stream.server.vod.store import (
    ORIGINAL,
    OfferedAudio,
    Rendition,
    Storage,
    Video,
    VideoStore,
    rendition_name,
)
from carn_stream.server.vod.subtitles import VideoSubtitles
from carn_stream.server.vod.title import (
    COPY_NAME,
    StoreRequest,
    make_copy,
    plot,
    public_report,
    title_command,
    title_weights,
    training_progress,
)
from carn_stream.settings import Settings

log = logging.getLogger(__name__)


class NotReady(Exception):
    """The segment executor is not ready yet (the model is loading)."""


class SegmentError(Exception):
    """A segment could not be made; the message names it and the reason."""


class SegmentRefused(SegmentError):
    """The input is at fault (over a limit, undecodable): making it again will not help."""


class Busy(Exception):
    """Too much is waiting already; the request may be sent again shortly."""


class LowOnDisk(Exception):
    """The data folder's disk is below its floor and no cached segment is left to evict."""


class VideoGone(Exception):
    """The video was deleted while a request waited for one of its segments."""


@dataclass(eq=False)
class _Work:
    key: Key
    ticket: Ticket
    prefetch: bool  #: no player waits for it (yet)
    task: asyncio.Task | None = None
    started: bool = False  #: it holds an executor slot
    waiters: int = 0  #: requests waiting for it now
    dropped: bool = False  #: cancelled (a seek, or its players have gone)
    frames: int = 0  #: the segment's frames
    frames_done: int = 0
    ahead: bool = False  #: started as prefetch (``prefetch`` turns False when a player asks)
    #: the rendition's previous segment's work: a prefetch starts once it is done, so the
    #: segment a player catches up with never shares the worker with the one after it
    after: _Work | None = None
    asked: asyncio.Event = field(default_factory=asyncio.Event)  #: a player waits for it now

    @property
    def gone(self) -> bool:
        """Cancelled or ended: a request cannot join it."""
        task = self.task
        return self.dropped or task is None or task.done() or task.cancelling() > 0

    @property
    def nearly_done(self) -> bool:
        """Half made or more: worth finishing for the cache when its player has gone."""
        return self.started and self.frames_done * 2 >= max(self.frames, 1)


class VideoManager:
    def __init__(
        self,
        store: VideoStore,
        settings: Settings,
        metrics: Metrics,
        executor: Callable[[], SegmentExecutor | None],
        slots: Slots,
        offload: Callable[..., Awaitable] | None = None,
        intake: Intake | None = None,
        checks: Callable[..., Awaitable] | None = None,
    ) -> None:
        """``offload`` runs downloads and probes (default: asyncio's thread pool); ``intake``,
        the service's rules for inputs (else made from ``settings``); ``checks`` runs address
        checks (default: ``offload``)."""
        self.store, self.settings, self.metrics = store, settings, metrics
        self.offload = offload or asyncio.to_thread
        self.checks = checks or self.offload
        self.ingests = Turns(settings.max_concurrent_ingests)  #: ingests under way
        self.responses = Turns(settings.max_segment_responses)  #: segment requests under way
        self.intake = intake or Intake.from_settings(settings)
        self.encoder = EncoderOptions()
        self.slots = slots
        self._executor = executor
        root = settings.data_dir / "videos"
        _remove_unknown(root, set(store.ids()))
        self.cache = SegmentCache(root, settings.vod_cache_bytes)
        self.subtitles = VideoSubtitles(self.cache.folder)
        self.audio = VideoAudio(self.cache, self._disk_shortfall, self._evicted,
                                store.set_audio, metrics)  # fmt: skip
        self._work: dict[Key, _Work] = {}
        self._playheads = Playheads(settings.vod_viewer_idle_seconds)
        self._videos: dict[str, Video] = {}
        self._tunes: dict[str, asyncio.Task] = {}
        #: Fine-tunes training now (each a torch process of its own): the rest wait, queued.
        self._tune_turns = asyncio.Semaphore(settings.vod_max_concurrent_tunes)
        self._deleting: set[str] = set()  #: videos being deleted now
        self._replanning: set[str] = set()  #: videos being planned again now
        self._replan: asyncio.Task | None = None
        self._closing = False
        # Videos added before each recorded its own choice follow the setting: their upscaled
        # segments go when it changes; those of videos with a choice of their own stay.
        made_with = {"deinterlace": self.intake.deinterlace}
        if gone := self.cache.keep_made_with(made_with, {ORIGINAL}, self._follows_settings):
            log.info("%d cached segments were made with other settings: removed", gone)
        metrics.vod_cache_bytes.set(self.cache.bytes)
        for video_id in store.unfinished_tunes():  # cut short by a stop: not resumed
            store.set_tune(video_id, "failed", tune_error="interrupted by a server restart")

    # ------------------------------------------------------------------ videos

    def get(self, video_id: str) -> Video | None:
        video = self._videos.get(video_id)
        if video is None:
            video = self.store.get(video_id)
            if video is not None:
                self._videos[video_id] = video
        return video

    def _follows_settings(self, video_id: str) -> bool:
        """Whether the video's segments are made as the service's settings say (it records
        no deinterlace choice of its own)."""
        video = self.store.get(video_id)
        return video is None or video.deinterlace is None

    def deinterlaces(self, video: Video) -> bool:
        """Whether ``video``'s interlaced frames are made progressive: its own choice, or, for a
        video from before the choice, the service's setting."""
        return self.intake.deinterlace if video.deinterlace is None else video.deinterlace

    def cached(self, video_id: str) -> dict[str, dict[int, int]]:
        """Per rendition: cached segment index -> bytes."""
        return self.cache.cached(video_id)

    async def ingest(
        self, url: str, scales: list[int], tune: bool = False, store: StoreRequest | None = None,
        raw_rate: Fraction | None = None, deinterlace: bool | None = None,
    ) -> Video:  # fmt: skip
        """Fetch, check and plan ``url``; raises FetchError, LimitError, InputError, NotReady,
        Busy (as many ingests as allowed are under way). Cancelling it (its client has gone)
        stops the download at once. ``store``: keep a low-resolution copy instead (its
        upscaled rendition at ``store.scale`` is the source's size) and make the title's own
        model for it. A raw H.264/HEVC stream is kept as an MP4 copy with timestamps, at
        ``raw_rate`` (None: its header's). ``deinterlace`` (None: the service's setting) is
        recorded with the video: a restart with another setting keeps its segments alike."""
        executor = self._executor()
        if executor is None:
            raise NotReady("the model is still loading; try again in a moment")
        if not self.ingests.take():
            raise Busy(f"{self.ingests.held} videos are being ingested already; "
                       "try again in a moment")  # fmt: skip
        try:
            chosen = self.intake.deinterlace if deinterlace is None else deinterlace
            return await self._ingest(executor, url, scales, tune, store, raw_rate, chosen)
        finally:
            self.ingests.give()

    async def _ingest(
        self, executor: SegmentExecutor, url: str, scales: list[int], tune: bool,
        store: StoreRequest | None, raw_rate: Fraction | None, deinterlace: bool,
    ) -> Video:  # fmt: skip
        await self.checks(validate_url, url, self.intake.policy)
        video_id = uuid.uuid4().hex
        folder = self.cache.folder(video_id)
        await asyncio.to_thread(folder.mkdir, parents=True)
        cancelled = threading.Event()  # a request cut short stops its download
        try:
            source = await self.offload(
                fetch, url, folder / INPUT_NAME, self.intake.policy, cancelled
            )
            storage = None
            if store is not None:
                source, storage = await self._store_small(
                    executor, source, store, folder, raw_rate
                )
                scales = sorted({store.scale, *scales})
                tune = True  # the title's own model serves the copy
            limits = self.intake.limits(max(scales))
            timed = folder / INPUT_NAME if store is None else None  # the stored copy is MP4
            request = PlanRequest(source, self.intake.segment_seconds, limits,
                                  timed_copy=timed, raw_rate=raw_rate)  # fmt: skip
            plan = await executor.plan(request)
            if store is None:
                source = _own_copy(source, folder)
            renditions, audio = await self._describe(source, plan, scales)
            video = self.store.create(url, source, plan, renditions, tune, video_id, storage,
                                      deinterlace, audio)  # fmt: skip
        except BaseException as exc:
            cancelled.set()
            await asyncio.to_thread(shutil.rmtree, folder, True)
            if isinstance(exc, Exception) and exc.args:  # the user's URL, never our paths
                exc.args = (redact_paths(str(exc), folder, url), *exc.args[1:])
            raise
        self._videos[video.id] = video
        log.info("video %s ingested: %d segments, %.1f s", video.id, len(plan.segments),
                 plan.duration)  # fmt: skip
        if tune:
            task = asyncio.create_task(self._tune(video), name=f"tune-{video.id}")
            self._tunes[video.id] = task
            task.add_done_callback(lambda _: self._tunes.pop(video.id, None))
        return video

    async def _describe(
        self, source: Path, plan: SegmentPlan, scales: list[int]
    ) -> tuple[list[Rendition], OfferedAudio | None]:
        """A plan's renditions (the original where it can be copied, one per scale) and its
        audio renditions (one reading of the input's audio; None where it cannot be read)."""
        renditions = await self.offload(describe_renditions, source, plan, scales, self.encoder)
        original = any(r.name == ORIGINAL for r in renditions)
        return renditions, await self.offload(offered_audio, source, plan, original)

    async def _store_small(
        self, executor: SegmentExecutor, source: Path, store: StoreRequest, folder: Path,
        raw_rate: Fraction | None,
    ) -> tuple[Path, Storage]:  # fmt: skip
        """The low-resolution copy the video keeps (the source checked first, in the executor,
        against the limits of its own size; a raw stream given timestamps there)."""
        request = PlanRequest(source, self.intake.segment_seconds, self.intake.limits(1),
                              timed_copy=folder / INPUT_NAME, raw_rate=raw_rate)  # fmt: skip
        await executor.plan(request)
        source = _own_copy(source, folder)
        copy = await make_copy(source, folder / COPY_NAME, store.scale, store.codec, store.crf)
        storage = Storage(
            scale=store.scale, codec=store.codec, crf=store.crf, keep_source=store.keep_source,
            source_bytes=source.stat().st_size, stored_bytes=copy.path.stat().st_size,
            source_kept=True, source_file=str(source),
        )  # fmt: skip
        return copy.path, storage

    async def delete(self, video_id: str) -> bool:
        """Remove a video, its work in flight (its fine-tune too) and its cached segments."""
        self._deleting.add(video_id)
        try:
            return await self._delete(video_id)
        finally:
            self._deleting.discard(video_id)

    async def _delete(self, video_id: str) -> bool:
        tasks = [w.task for k, w in self._work.items() if k.video == video_id and w.task]
        if video_id in self._tunes:
            tasks.append(self._tunes[video_id])
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        self._videos.pop(video_id, None)
        self._playheads.forget(video_id)
        self.subtitles.forget(video_id)
        self.audio.forget(video_id)
        existed = self.store.delete(video_id)
        self.cache.forget(video_id)
        await asyncio.to_thread(shutil.rmtree, self.cache.folder(video_id), True)
        self.metrics.vod_cache_bytes.set(self.cache.bytes)
        return existed

    def start(self) -> None:
        """Plan again, in the background, the videos planned by an older rule than today's
        (their segments could miss frames or fail): see :meth:`_replan_stale`. Their
        playlists and segments get 503 until then."""
        stale = []
        for video_id in self.store.ids():
            video = self.store.get(video_id)  # (None for a row this version cannot read)
            if video is not None and not video.plan.current:
                stale.append(video)
        self._replanning.update(v.id for v in stale)
        if stale:
            self._replan = asyncio.create_task(self._replan_stale(stale), name="replan-videos")

    async def _replan_stale(self, videos: list[Video], wait_seconds: float = 600) -> None:
        """Once the executor is up, plan each video again and describe its renditions anew
        (the same scales); its cached segments go. Until then its playlists and segments get
        503; a video that no longer plans keeps its old plan (logged)."""
        deadline = time.monotonic() + wait_seconds
        try:
            while (executor := self._executor()) is None:
                if time.monotonic() > deadline:
                    log.warning("the executor did not start: %d videos keep older plans",
                                len(videos))  # fmt: skip
                    return
                await asyncio.sleep(0.5)
            for video in videos:
                try:
                    if video.id not in self._deleting and self.store.get(video.id) is not None:
                        await self._replan_one(executor, video)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("video %s keeps its older plan: %s", video.id, exc)
                finally:
                    self._replanning.discard(video.id)
        finally:
            self._replanning.difference_update(v.id for v in videos)

    async def _replan_one(self, executor: SegmentExecutor, video: Video) -> None:
        """(No work runs for it: it has been refused since start, see :meth:`check_planned`.)"""
        scales = [r.scale for r in video.renditions if r.name != ORIGINAL]
        limits = self.intake.limits(max(scales, default=1))
        request = PlanRequest(video.source, self.intake.segment_seconds, limits)
        plan = await executor.plan(request)
        renditions, audio = await self._describe(video.source, plan, scales)
        # What the old plan timed goes first, and the new plan is recorded last (shielded: a
        # stop between the two kept old segments under a plan counted current, served at the
        # new plan's indexes, and every master playlist failed).
        await asyncio.shield(self._replace_plan(video, plan, renditions, audio))
        log.info("video %s planned again: %d segments", video.id, len(plan.segments))

    async def _replace_plan(self, video: Video, plan, renditions, audio) -> None:
        for rendition in video.renditions:
            self.cache.drop(video.id, rendition.name)
        await asyncio.to_thread(self.subtitles.drop, video.id)  # timed by the old plan
        self.audio.drop(video.id)  # (the cache's: from the event loop)
        self.store.set_plan(video.id, plan, renditions, audio)
        self._videos.pop(video.id, None)
        self._playheads.forget(video.id)
        self.metrics.vod_cache_bytes.set(self.cache.bytes)

    async def close(self) -> None:
        self._closing = True
        tasks = [w.task for w in self._work.values() if w.task is not None]
        tasks += self._tunes.values()
        if self._replan is not None:
            tasks.append(self._replan)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    # ------------------------------------------------------------------ fine-tune

    async def _tune(self, video: Video) -> None:
        """Make the video's own model in a child process at a lower CPU priority than
        playback (``carn-stream tune`` on its frames; for a video stored small, ``carn-stream
        assess``: compression-aware, with the title's report), then serve the video with it."""
        async with self._tune_turns:  # (queued until then, as ingest recorded it)
            await self._tune_now(video)

    async def _tune_now(self, video: Video) -> None:
        name = tuned_name(video.id)
        weights = self.settings.data_dir / name
        folder = self.cache.folder(video.id)
        self._record_tune(video, "running")
        try:
            if video.storage is None:
                generic, tuned = await self._tune_bicubic(video, weights)
            else:
                generic, tuned = await self._tune_title(video, video.storage, weights, folder)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = redact_paths(str(exc), folder, video.url)
            log.warning("video %s: fine-tune failed: %s", video.id, reason)
            self._record_tune(video, "failed", tune_error=reason)
            return
        # Segments made with the service's model make way for the video's own (those its
        # model now serves: judged with its new weights), before it is said to be done.
        tuned_video = dataclasses.replace(video, weights=name)
        for rendition in video.renditions:
            if rendition.scale > 1 and _weights_for(tuned_video, rendition.scale) is not None:
                self.cache.drop(video.id, rendition.name)
        self._record_tune(video, "done", weights=name, psnr_generic=generic, psnr_tuned=tuned)
        await self._let_source_go(video)
        self.metrics.vod_cache_bytes.set(self.cache.bytes)
        log.info("video %s tuned: %.2f -> %.2f dB on held-out frames", video.id, generic, tuned)

    async def _tune_bicubic(self, video: Video, weights: Path) -> tuple[float, float]:
        """``carn-stream tune`` on the video's frames; (generic, tuned) held-out PSNR."""
        scales = [str(r.scale) for r in video.renditions if r.scale > 1]
        command = [
            sys.executable, "-m", "carn_stream.cli", "tune", str(video.source), str(weights),
            "--scale", *scales, "--frames", str(self.settings.vod_tune_frames),
            "--steps", str(self.settings.vod_tune_steps), "--device", self.settings.device,
        ]  # fmt: skip
        if self.settings.weights is not None:
            command += ["--weights", str(self.settings.weights)]
        await run_child(command, weights.with_name("tune.log"))
        report = TuneReport.read(weights.with_suffix(".json"))
        return report.generic_psnr, report.tuned_psnr

    async def _tune_title(
        self, video: Video, storage: Storage, weights: Path, folder: Path
    ) -> tuple[float, float]:
        """``carn-stream assess`` on the source and the stored copy's encoding: the title's
        compression-aware model and its report; the source goes unless it is to be kept."""
        source = Path(storage.source_file)
        precision = "fp32" if self.settings.precision == "auto" else self.settings.precision
        command = title_command(
            source, folder, storage.scale, storage.codec, storage.crf,
            frames=self.settings.vod_tune_frames, steps=self.settings.vod_tune_steps,
            report_frames=self.settings.vod_report_frames, device=self.settings.device,
            precision=precision, weights=self.settings.weights,
        )  # fmt: skip
        await run_child(command, folder / "title.log")
        report = await asyncio.to_thread(public_report, folder, public_url(video.url))
        if report is None or not report.get("training"):
            raise RuntimeError("the title's report is missing")
        await asyncio.to_thread(title_weights(folder, storage.scale).replace, weights)
        training = report["training"]
        return float(training["generic_psnr"]), float(training["tuned_psnr"])

    async def _let_source_go(self, video: Video) -> None:
        """A video stored small whose model is made (and recorded: a crash before would leave
        it without its source and its model unused) no longer needs its source, unless it is
        to be kept (a local input file is never removed)."""
        storage = video.storage
        if storage is None or storage.keep_source or not storage.source_file:
            return
        source = Path(storage.source_file)
        if source.is_relative_to(self.cache.folder(video.id)):
            await asyncio.to_thread(source.unlink, True)
            self.store.set_storage(video.id, storage.model_copy(update={"source_kept": False}))

    def tune_progress(self, video: Video) -> float | None:
        """How far the video's own model is (training steps done; 1 once it serves)."""
        if video.tune_state == "done":
            return 1.0
        if video.tune_state != "running" or video.storage is None:
            return None
        return training_progress(self.cache.folder(video.id), self.settings.vod_tune_steps)

    def report(self, video: Video) -> dict | None:
        """The per-title report of a video stored small (None until its model is made: a
        report written by a run that failed after it is not the video's)."""
        if video.storage is None or video.tune_state != "done":
            return None
        return public_report(self.cache.folder(video.id), public_url(video.url))

    def report_plot(self, video: Video) -> Path | None:
        path = plot(self.cache.folder(video.id))
        ready = video.storage is not None and video.tune_state == "done"
        return path if ready and path.is_file() else None

    def _record_tune(self, video: Video, state: str, **values: object) -> None:
        """Store the fine-tune's state; the video is read afresh from the store next time."""
        self.store.set_tune(video.id, state, **values)
        self._videos.pop(video.id, None)

    # ------------------------------------------------------------------ playlists

    def master_playlist(self, video: Video, viewer: str, only: str | None = None) -> str:
        """The master playlist of one player: ``viewer`` goes into every URI it names. ``only``:
        that rendition alone, with the audio and subtitle renditions (LookupError where the
        video has no such rendition)."""
        self.check_planned(video)
        if only is not None and video.rendition(only) is None:
            raise LookupError(f"the video has no rendition {only!r} (its renditions: "
                              f"{', '.join(r.name for r in video.renditions)})")  # fmt: skip
        variants = []
        cached = self.cache.cached(video.id)
        rate = float(video.plan.frame_rate) if video.plan.frame_rate else None
        audio = self.audio.media(video)
        group = [s.codec for s in self.audio.streams(video)]
        extra = self.audio.peak_rate(video)  # a player of a rendition fetches it too
        for r in video.renditions:
            if only is not None and r.name != only:
                continue
            measured = video.plan.peak_rate(cached.get(r.name, {}))
            variants.append(Variant(f"{r.name}/{PLAYLIST_NAME}{viewer_query(viewer)}",
                                    round(max(measured, r.bandwidth) + extra),
                                    r.width, r.height, with_codecs(r.codecs, group), rate,
                                    video_range(video.plan.transfer)))  # fmt: skip
        return master_playlist_text(variants, self.subtitles.media(video), audio)

    def media_playlist(self, video: Video, rendition: Rendition, viewer: str) -> str:
        """A rendition's playlist for one player: ``viewer`` goes into its segments' URIs."""
        self.check_planned(video)
        return plan_playlist_text(video.plan, viewer_query(viewer), rendition.fragmented)

    def cached_size(self, video: Video, rendition: str, index: int) -> int | None:
        """The bytes of a cached segment; None when it is not made yet."""
        self.check_planned(video)
        return self.cache.cached(video.id).get(rendition, {}).get(index)

    def check_planned(self, video: Video) -> None:
        """Busy while ``video`` waits to be planned again (after an upgrade): its playlists
        and segments would not match the plan it is about to have."""
        if video.id in self._replanning:
            raise Busy("this video is being planned again after an upgrade; try again in a "
                       "moment")  # fmt: skip

    # ------------------------------------------------------------------ segments

    async def segment(
        self, video: Video, rendition: str, index: int, viewer: str = ""
    ) -> OpenFile:
        """The segment's file, opened, from the cache or made now (a player waits for it).
        Cancelling the call (the player has gone) drops the work unless it is nearly done.
        ``viewer``: the player's id from its playlist ("" for none)."""
        self.check_planned(video)
        key = Key(video.id, rendition, index)
        began = time.monotonic()
        head = (video.id, rendition, viewer)
        starts = self._playheads.move(head, index)
        opened = self.cache.open(key)
        if opened is not None:
            self.metrics.vod_cache_hits.labels(rendition).inc()
            self._prefetch(video, rendition, index)
        else:
            self.metrics.vod_cache_misses.labels(rendition).inc()
            with self._playheads.waiting(head):
                opened = await self._wait_for(video, key, viewer)
        if starts:  # the start of a playback, or a seek
            self.metrics.vod_first_segment_seconds.labels(rendition).observe(
                time.monotonic() - began
            )
        return opened

    async def init_segment(self, video: Video, rendition: Rendition, viewer: str = "") -> Path:
        """A fragmented-MP4 rendition's ``init.mp4``: written with the first of its segments
        made that has every track, segments made now from the first on until one is (a
        segment may have no audio); where none has, made of their own headers
        (:func:`publish_init`). Cached segments that outlived their ``init.mp4`` are made
        again. The player's position is not moved: it asks for its segment next."""
        folder = self.cache.folder(video.id) / rendition.name
        path = folder / INIT_NAME
        for _ in range(2):
            for index in range(len(video.plan.segments)):
                if path.is_file():
                    return path
                key = Key(video.id, rendition.name, index)
                opened = self.cache.open(key) or await self._wait_for(video, key, viewer)
                opened.handle.close()
            try:  # no segment has every track: made of their own headers
                made = await asyncio.to_thread(publish_init, folder)
            except OutputError as exc:
                raise SegmentRefused(f"{INIT_NAME} of {rendition.name}: {exc}") from exc
            if made is not None:
                return made
            # its segments outlived their init.mp4 (removed behind our back): made again
            self.cache.drop(video.id, rendition.name)
        raise SegmentError(f"{INIT_NAME} of {rendition.name} could not be made")

    async def _wait_for(self, video: Video, key: Key, viewer: str) -> OpenFile:
        """Join the work making ``key`` (or start it) and open what it made. Work a seek
        dropped before it started is started again; a file evicted before it was opened is
        made again."""
        joined = False
        for _ in range(3):
            work = self._work.get(key)
            if work is None or work.gone:
                if self._waiting() >= self.settings.vod_max_waiting_segments:
                    raise Busy(f"{self._waiting()} segments are already waiting to be made; "
                               "try again in a moment")  # fmt: skip
                if not self._room_on_disk():
                    raise LowOnDisk(
                        "the server is low on disk space and no cached segment is left to "
                        f"make room ({self.settings.min_free_disk_bytes // MIB} MiB are kept "
                        "free); try again later"
                    )
                work = self._start(video, key, prefetch=False)
            elif not joined:
                joined = True
                self.metrics.vod_shared_requests.labels(key.rendition).inc()
            if work.prefetch:  # a player waits for it now
                work.prefetch = False
                work.asked.set()
                self.slots.raise_priority(work.ticket, Priority.WAITED)
            self._prefetch(video, key.rendition, key.index)
            assert work.task is not None
            work.waiters += 1
            try:
                path = await asyncio.shield(work.task)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    self._player_gone(key, viewer)
                    raise  # this request was cancelled: its player has gone
                if self._closing:
                    raise
                if video.id in self._deleting or self.get(video.id) is None:
                    raise VideoGone(f"video {video.id} was deleted") from None
                self.check_planned(video)  # its work was cancelled for that
                continue  # dropped by a seek elsewhere, but wanted here: make it again
            finally:
                work.waiters -= 1
                self._abandon(work)
            try:
                return await asyncio.to_thread(OpenFile.of, path)
            except FileNotFoundError:
                continue
        raise SegmentError(f"segment {key.index} of {key.rendition} could not be kept long "
                           "enough to be sent; try again")  # fmt: skip

    def _waiting(self) -> int:
        """Segments players wait for that have not started."""
        return sum(not (w.prefetch or w.started or w.gone) for w in self._work.values())

    def _abandon(self, work: _Work) -> None:
        """Cancel work nobody waits for any more, unless it is prefetch work or half made
        (then it is finished for the cache)."""
        if work.waiters or work.prefetch or work.gone or work.nearly_done:
            return
        log.info("segment %s: nobody waits for it any more; dropped", work.key)
        self._drop(work)

    def _player_gone(self, key: Key, viewer: str) -> None:
        """A player hung up waiting for ``key``: what was made ahead for it and has not
        started is dropped too, unless it lies ahead of another live player (a player that
        comes back asks again). A named player is forgotten, unless it has asked for another
        segment since (a seek aborts the request it leaves)."""
        head = (key.video, key.rendition, viewer)
        still_here = self._playheads.at(head) == key.index
        if viewer and still_here:
            self._playheads.forget(key.video, key.rendition, viewer)
        wanted = self._wanted(key.video, key.rendition, None, exclude=head if still_here else None)
        self._drop_prefetch(key.video, key.rendition, wanted, among=self._ahead(key.index, None))
        self._gauge()

    def _ahead(self, index: int, last: int | None) -> range:
        """The segments prefetched for a player at ``index`` (up to segment ``last - 1``)."""
        end = index + 1 + self.settings.vod_prefetch_segments
        return range(index + 1, end if last is None else min(last, end))

    def _wanted(
        self, video_id: str, rendition: str, last: int | None, exclude: Head | None = None
    ) -> set[int]:
        """The segments ahead of any of the rendition's live players (but ``exclude``)."""
        return {
            i
            for position in self._playheads.positions(video_id, rendition, exclude)
            for i in self._ahead(position, last)
        }

    def _queued_prefetch(self) -> int:
        """Prefetch work that has not started, over every video."""
        return sum(w.prefetch and not w.started and not w.gone for w in self._work.values())

    def _drop_prefetch(
        self,
        video_id: str,
        rendition: str,
        keep: Container[int],
        among: Container[int] | None = None,
    ) -> None:
        """Drop the rendition's prefetch work that has not started, but the segments in
        ``keep`` (only segments in ``among``, when given)."""
        for work in list(self._work.values()):
            index = work.key.index
            if (work.key.video, work.key.rendition) == (video_id, rendition) and work.prefetch \
                    and not work.started and not work.gone and index not in keep \
                    and (among is None or index in among):  # fmt: skip
                self._drop(work)

    def _drop(self, work: _Work) -> None:
        work.dropped = True
        assert work.task is not None
        work.task.cancel()

    def _start(self, video: Video, key: Key, prefetch: bool) -> _Work:
        """Start making ``key``; none is started for a video being deleted or gone (its
        folder is about to go, or has: the work would write into it, or fail, after)."""
        if key.video in self._deleting or self.get(key.video) is None:
            raise VideoGone(f"video {key.video} was deleted")
        priority = (
            Priority.PREFETCH if prefetch else Priority.WAITED
        )
        work = _Work(key, self.slots.ticket(priority), prefetch, ahead=prefetch)
        if prefetch and self._one_engine():
            work.after = self._work.get(Key(key.video, key.rendition, key.index - 1))
        work.task = asyncio.create_task(self._make(video, work), name=f"segment-{key}")
        self._work[key] = work
        work.task.add_done_callback(lambda task: self._finished(work, task))
        return work

    def _one_engine(self) -> bool:
        """Segments share one model (a worker process, one node): prefetch goes one segment
        after the other, so the one a player catches up with has the model to itself. With
        more engines (a cluster) prefetched segments run side by side."""
        executor = self._executor()
        return executor is None or sum(executor.engines.values()) <= 1

    def _finished(self, work: _Work, task: asyncio.Task) -> None:
        if self._work.get(work.key) is work:
            del self._work[work.key]
        if not task.cancelled() and task.exception() is not None and work.prefetch:
            log.warning("prefetching %s failed: %s", work.key, task.exception())
        self._gauge()

    def _gauge(self) -> None:
        self.metrics.vod_prefetch_depth.set(sum(w.prefetch for w in self._work.values()))

    def _prefetch(self, video: Video, rendition: str, index: int) -> None:
        """Make the next segments ahead; drop waiting prefetch work no player is ahead of
        any more (a seek)."""
        if video.id in self._replanning or video.id in self._deleting:
            return
        last = len(video.plan.segments)
        ahead = self._ahead(index, last)
        wanted = self._wanted(video.id, rendition, last) | set(ahead)
        self._drop_prefetch(video.id, rendition, wanted)
        if self._disk_shortfall():
            return  # below the disk floor: only what a player waits for is made
        for i in ahead:
            key = Key(video.id, rendition, i)
            if self._queued_prefetch() >= self.settings.vod_max_waiting_segments:
                break  # as many as players may wait for: more would only wait longer
            if key not in self.cache and key not in self._work:
                self._start(video, key, prefetch=True)
        self._gauge()

    async def _make(self, video: Video, work: _Work) -> Path:
        """Make the segment; returns where to read it (its place in the cache)."""
        key = work.key
        segment = video.plan.segments[key.index]
        work.frames = segment.frames
        rendition = video.rendition(key.rendition)
        fragment = rendition is not None and rendition.fragmented
        target = self.cache.path(key, fragment)
        await _behind(work)
        # The slot first: work takes slots in the order of its tickets, not of a thread's
        # finishing the folder.
        await self.slots.acquire(work.ticket)
        try:
            work.started = True
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            executor = self._executor()
            if executor is None:
                raise NotReady("the model is still loading; try again in a moment")
            began = time.monotonic()
            try:
                if fragment:
                    await self._run_fragment(executor, video, work, target)
                else:
                    await self._run(executor, video, work, target)
            except (NotReady, asyncio.CancelledError):
                raise
            except Exception as exc:
                log.warning("video %s: %s (%s) failed: %s", video.id, segment.describe(),
                            key.rendition, exc)  # fmt: skip
                reason = redact_paths(str(exc), self.cache.folder(video.id), video.url)
                kind = SegmentRefused if isinstance(exc, PipelineError) else SegmentError
                raise kind(f"{segment.describe()} of {key.rendition} could not be "
                           f"made: {reason}") from exc  # fmt: skip
            seconds = time.monotonic() - began
        finally:
            self.slots.release()
        self.metrics.vod_realtime_factor.labels(key.rendition).observe(seconds / segment.duration)
        self.metrics.vod_segments_made.labels(key.rendition, _reason(work)).inc()
        size = (await asyncio.to_thread(target.stat)).st_size
        current = self.get(video.id)
        if current is None or (current.weights, current.plan) != (video.weights, video.plan):
            # Made for a video deleted meanwhile, or with weights (or by a plan) it no longer
            # uses: sent to those who wait, not kept (a name the cache removes at start, and
            # removed once they have opened it).
            stale = target.with_name(f".stale-{uuid.uuid4().hex}.part")
            target.replace(stale)
            asyncio.get_running_loop().call_later(60, stale.unlink, True)
            return stale
        evicted = self.cache.add(key, size, self._disk_shortfall(), fragment)
        self._evicted(evicted)
        return target

    def _disk_shortfall(self) -> int:
        """Bytes missing to the data folder's disk floor (``CARN_STREAM_MIN_FREE_DISK_BYTES``)."""
        return disk_space(self.cache.root, self.settings.min_free_disk_bytes).shortfall()

    def _room_on_disk(self) -> bool:
        """Whether a segment may be made: the disk is above its floor, once the least recently
        used segments have been evicted to get it there if need be."""
        shortfall = self._disk_shortfall()
        if shortfall:
            self._evicted(self.cache.make_room(shortfall))
            shortfall = self._disk_shortfall()
        return shortfall == 0

    def _evicted(self, keys: list[Key]) -> None:
        if keys:
            self.metrics.vod_cache_evictions.inc(len(keys))
        self.metrics.vod_cache_bytes.set(self.cache.bytes)

    async def _run_fragment(
        self, executor: SegmentExecutor, video: Video, work: _Work, target: Path
    ) -> None:
        """Make the segment as MPEG-TS beside ``target`` (a name the cache clears at start),
        then publish it as a fragmented-MP4 media segment at ``target`` (and the rendition's
        ``init.mp4`` with the first)."""
        made = target.with_name(f".{segment_name(work.key.index)}.fragment.part")
        try:
            await self._run(executor, video, work, made)
            await asyncio.to_thread(publish_fragment, made, target.parent, work.key.index,
                                    video.plan.hdr)  # fmt: skip
        finally:
            made.unlink(missing_ok=True)

    async def _run(self, executor: SegmentExecutor, video: Video, work: _Work, target: Path):
        index = work.key.index
        if work.key.rendition == ORIGINAL:
            return await executor.remux(RemuxTask.of(video.source, video.plan, index, target))
        rendition = video.rendition(work.key.rendition)
        assert rendition is not None
        options = PipelineOptions(
            scale=rendition.scale,
            encoder=self.encoder,
            batch_size=self.intake.batch(executor),
            priority=work.ticket.priority,
            weights=_weights_for(video, rendition.scale),
            max_output_pixels=self.intake.max_output_pixels,
            upright=True,  # its segments are served as they are
            deinterlace=self.deinterlaces(video),
        )
        task = SegmentTask.of(video.source, video.plan, index, target, options)

        speed = self.metrics.speed

        def frame_done(report: FrameReport) -> None:
            work.frames_done += 1
            speed.observe(report, "segments")

        return await executor.run(task, frame_done)


def _own_copy(source: Path, folder: Path) -> Path:
    """The input a video keeps: the service's copy in its folder (a download, or a raw stream's
    copy with timestamps), else ``source`` (a local input file, never written)."""
    copy = folder / INPUT_NAME
    return copy if copy.is_file() else source


async def _behind(work: _Work) -> None:
    """A prefetch waits for the rendition's segment before it, unless a player asks for it."""
    before, work.after = work.after, None
    if before is None or before.task is None or before.task.done() or work.asked.is_set():
        return
    asked = asyncio.ensure_future(work.asked.wait())
    try:
        await asyncio.wait({before.task, asked}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        asked.cancel()


def _reason(work: _Work) -> str:
    """Why a segment was made: a player asked (``request``), made ahead and ready before any
    player asked (``prefetch``), or made ahead but a player asked before it was done
    (``prefetch_late``: making is slower than playback, or the player skipped ahead)."""
    if not work.ahead:
        return "request"
    return "prefetch" if work.prefetch else "prefetch_late"


def describe_renditions(
    source: Path, plan: SegmentPlan, scales: list[int], encoder: EncoderOptions
) -> list[Rendition]:
    """The original (when it is H.264 or HEVC, every segment starts on a
    keyframe: segments cut between the keyframes of a long-GOP input cannot be copied as they
    are, a decode from that keyframe shows the segment's start: not so for intra refresh, it
    is not shown turned: MPEG-TS cannot say so, and its packets carry presentation times:
    AVI's are in decode order) and one rendition per scale, its frames turned upright.

    Bandwidth: the source's bit rate, times scale squared for the upscaled ones (an estimate
    until segments are made; the master playlist then gives the measured peak)."""
    video_tag, audio, _ = source_codecs(source)
    bitrate = round(8 * source.stat().st_size / max(plan.duration, 1e-3))
    rotation = display_rotation(source)
    out = []
    # H.264 is copied into MPEG-TS, HEVC into fragmented MP4 (Apple's HLS authoring
    # specification asks for HEVC in it; ``Rendition.fragmented``).
    copyable = not quarter_turns(rotation) and not plan.decode_order
    remuxable = video_tag is not None and video_tag.startswith(("avc1.", "hvc1."))
    if (remuxable and plan.keyframe_aligned and copyable
            and segments_show_their_start(source, plan)):  # fmt: skip
        codecs = ",".join(t for t in (video_tag, audio) if t)
        out.append(Rendition(name=ORIGINAL, scale=1, width=plan.width, height=plan.height,
                             codecs=codecs, bandwidth=bitrate))  # fmt: skip
    upscaled_audio = upscaled_audio_tag(source)
    for scale in sorted(set(scales)):
        w, h = upscaled_size(plan.width, plan.height, scale)
        if quarter_turns(rotation) % 2:
            w, h = h, w
        tag = encoder_tag(w, h, plan.frame_rate, encoder)
        codecs = ",".join(t for t in (tag, upscaled_audio) if t)
        out.append(Rendition(name=rendition_name(scale), scale=scale, width=w, height=h,
                             codecs=codecs, bandwidth=bitrate * scale * scale))  # fmt: skip
    return out


def _remove_unknown(root: Path, known: set[str]) -> None:
    """Folders of videos the store does not know (an ingest cut short) are removed."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if folder.is_dir() and folder.name not in known:
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)


def _weights_for(video: Video, scale: int) -> str | None:
    """The weights a rendition of ``scale`` is upscaled with: the video's own where they were
    trained for it (a stored-small video's title model learned its copy's scale alone: at x4
    it did worse than the service's model), else the service's (None)."""
    if video.weights is None or (video.storage is not None and scale != video.storage.scale):
        return None
    return video.weights

