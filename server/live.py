"""Live mode: WebRTC sessions whose video track returns the source upscaled.

The upscaling track keeps latency bounded when inference is slower than the source: only the
newest source frame is kept (the others are dropped and counted), and an adaptive policy
shrinks the input while inference takes longer than the latency budget, growing it back when
there is room. Inference runs on the service's own worker with priority over its other work
(jobs and videos run in a worker process of their own with the default executor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import aioice.ice
import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from carn_stream.pipeline.engine.infer import InferenceWorker
from carn_stream.pipeline.frames import upscaled_size, yuv420_video_frame
from carn_stream.pipeline.media.decode import frame_planes, main_video, open_input
from carn_stream.pipeline.media.deinterlace import progressive
from carn_stream.pipeline.priorities import Priority
from carn_stream.pipeline.run import FrameReport, StageTimings
from carn_stream.server.live_bitrate import BitratePolicy
from carn_stream.server.metrics import Metrics
from carn_stream.server.offers import SdpError, answer_only_what_is_used, check_offer
from carn_stream.settings import Settings

log = logging.getLogger(__name__)

#: A source's frame rate is judged over frames at least this many seconds apart.
MIN_RATE_SPAN = 0.2


def restrict_ice_hosts(addresses: tuple[str, ...]) -> None:
    """Gather ICE host candidates only on ``addresses`` (process-wide; empty = all interfaces)."""
    if not addresses:
        return
    chosen = list(addresses)

    def only_configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = only_configured


#: A session ends after this many frames in a row fail to upscale (one failure skips the
#: frame: the picture froze for good, the session holding its slot, before).
MAX_FAILURES_IN_A_ROW = 3


@dataclass(frozen=True)
class LatencyPolicy:
    max_latency: float = 0.5  #: inference seconds per frame before the input is shrunk
    adaptive: bool = True
    min_fraction: float = 0.5  #: smallest input size, as a fraction of the source's
    #: the input size is changed on the inference time averaged over recent frames (this
    #: weight on the newest), and held at least this long after a change: single frames
    #: slowed by a neighbour made the picture's size flap every few seconds
    smoothing: float = 0.3
    hold_seconds: float = 1.0


@dataclass
class LiveStats:
    frames: int = 0
    dropped: int = 0
    input_size: tuple[int, int] = (0, 0)
    output_size: tuple[int, int] = (0, 0)
    latency: float = 0.0  #: seconds from a source frame's arrival to its upscaled frame
    input_fraction: float = 1.0
    overloaded: bool = False  #: inference too slow even at the smallest useful input
    failed: int = 0  #: frames that failed to upscale (skipped)
    inference: float | None = None  #: seconds per frame, averaged (at this input size)
    resized: float = field(default_factory=time.monotonic)  #: when the input size last changed
    started: float = field(default_factory=time.monotonic)
    recent: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  #: source frames, the last 3 s
    first_arrival: float | None = None

    def mark(self, at: float) -> None:
        """Record a frame delivered at ``at``; keep only the last 3 s."""
        self.recent.append(at)
        while self.recent and self.recent[0] < at - 3.0:
            self.recent.pop(0)

    def arrive(self, at: float) -> None:
        """Record a source frame arriving at ``at`` (upscaled or dropped later)."""
        if self.first_arrival is None:
            self.first_arrival = at
        self.arrivals.append(at)
        while self.arrivals and self.arrivals[0] < at - 3.0:
            self.arrivals.pop(0)

    @property
    def fps(self) -> float:
        return sum(t > time.monotonic() - 3.0 for t in self.recent) / 3.0

    @property
    def source_fps(self) -> float:
        """The rate the source sends frames at, over its frames of the last 3 s (0 until they
        span :data:`MIN_RATE_SPAN`): right from a session's first frames, not diluted by
        a 3 s window, and not thrown by two frames that arrive together."""
        recent = [t for t in self.arrivals if t > time.monotonic() - 3.0]
        span = recent[-1] - recent[0] if len(recent) > 1 else 0.0
        return (len(recent) - 1) / span if span >= MIN_RATE_SPAN else 0.0

    @property
    def keeping_up(self) -> bool:
        """Fast enough at the smallest useful input, and upscaling at least half the source's
        frames (judged over the last 3 s, once the source has sent frames for that long)."""
        if self.overloaded:
            return False
        now = time.monotonic()
        if self.first_arrival is None or now - self.first_arrival < 3.0:
            return True
        return self.fps >= self.source_fps / 2


class FileTrack(MediaStreamTrack):
    """A video file played in a loop at its own frame rate, as a live source (interlaced
    frames made progressive, as a camera's are).

    Decoding runs on one thread of its own, which also closes the file: the container is never
    touched by two threads. Timestamps keep increasing across loops.
    """

    kind = "video"

    def __init__(self, path: Path) -> None:
        super().__init__()
        with open_input(path) as probe_container:
            rate = main_video(probe_container).average_rate or 25
        self.path, self._period = path, 1.0 / float(rate)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="carn-live-file")
        self._container: av.container.InputContainer | None = None
        self._frames = None
        self._index = 0
        self._start: float | None = None

    def _decode_next(self) -> av.VideoFrame:
        for _ in range(2):  # at the end of the file, start again once
            if self._frames is None:
                self._container = open_input(self.path)
                video = main_video(self._container)
                decoded = ((frame.pts, frame) for frame in self._container.decode(video))
                self._frames = (frame for _, frame in progressive(decoded))
            try:
                return next(self._frames)
            except StopIteration:
                self._close()
        raise MediaStreamError

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._index * self._period
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        loop = asyncio.get_running_loop()
        frame = await loop.run_in_executor(self._pool, self._decode_next)
        frame.pts = round(self._index * self._period * 90000)
        frame.time_base = Fraction(1, 90000)
        self._index += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._pool.submit(self._close)
        self._pool.shutdown(wait=False)


class LatestFrameTrack(MediaStreamTrack):
    """Passes on the newest frame it is offered (the original beside the upscaled track).
    ``on_size`` hears each new picture size before a frame of it is passed on (its sender's
    rate)."""

    kind = "video"

    def __init__(self, on_size: Callable[[int, int], None] | None = None) -> None:
        super().__init__()
        self._frame: av.VideoFrame | None = None
        self._offered = asyncio.Event()
        self._on_size, self._size = on_size, (0, 0)

    def offer(self, frame: av.VideoFrame) -> None:
        if self._on_size is not None and (frame.width, frame.height) != self._size:
            self._size = (frame.width, frame.height)
            self._on_size(*self._size)
        self._frame = frame
        self._offered.set()

    async def recv(self) -> av.VideoFrame:
        while self._frame is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._offered.clear()
            await self._offered.wait()
        frame, self._frame = self._frame, None
        return frame

    def stop(self) -> None:
        super().stop()
        self._offered.set()


def size_cap(width: int, height: int, scale: int, max_output_pixels: int) -> float:
    """The largest input fraction whose upscaled frame stays within ``max_output_pixels``
    (0: no limit). Inputs are shrunk to even sizes by rounding down, so the cap holds."""
    out_w, out_h = upscaled_size(width, height, scale)
    pixels = out_w * out_h
    if not max_output_pixels or pixels <= max_output_pixels:
        return 1.0
    return math.sqrt(max_output_pixels / pixels)


class UpscaleTrack(MediaStreamTrack):
    """A video track returning ``source`` upscaled by ``scale``, newest frame first."""

    kind = "video"

    def __init__(
        self,
        source: MediaStreamTrack,
        worker: InferenceWorker,
        scale: int,
        metrics: Metrics,
        latency: LatencyPolicy,
        on_size: Callable[[int, int], None] | None = None,
        mirror: LatestFrameTrack | None = None,
        max_output_pixels: int = 0,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        """``on_failed(reason)``: :data:`MAX_FAILURES_IN_A_ROW` frames failed; the track has
        ended (the session should close)."""
        super().__init__()
        self.mirror, self.max_output_pixels = mirror, max_output_pixels
        self.source, self.worker, self.scale, self.metrics = source, worker, scale, metrics
        self.policy = latency
        self.stats = LiveStats()
        self._on_size, self._on_failed = on_size, on_failed
        self._failures = 0  #: in a row
        #: the session's own thread for its frames' pixel work (off the event loop)
        self._pixels = ThreadPoolExecutor(1, thread_name_prefix="carn-live-pixels")
        self._latest: tuple[av.VideoFrame, float] | None = None
        self._arrived = asyncio.Event()
        self._ended = False
        #: reads the source from the first :meth:`recv` on, when the peer has connected
        self._pump: asyncio.Future | None = None

    async def _read_source(self) -> None:
        try:
            while True:
                frame = await self.source.recv()
                self.stats.arrive(time.monotonic())
                if self.mirror is not None:
                    self.mirror.offer(frame)
                if self._latest is not None:
                    self.stats.dropped += 1
                    self.metrics.dropped_frames.labels("live").inc()
                self._latest = (frame, time.monotonic())
                self._arrived.set()
        except MediaStreamError:
            pass
        finally:
            self._ended = True
            self._arrived.set()
            if self.mirror is not None:
                self.mirror.stop()

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._pump is None:  # a sample is not decoded for a peer that never connects
            self._pump = asyncio.ensure_future(self._read_source())
        while True:
            while self._latest is None:
                if self._ended:
                    self.stop()
                    raise MediaStreamError
                self._arrived.clear()
                await self._arrived.wait()
            frame, arrived = self._latest
            self._latest = None
            try:
                upscaled = await self._upscale(frame, arrived)
            except (MediaStreamError, asyncio.CancelledError):
                raise
            except Exception as exc:  # (aiortc would end the track without a word)
                if self.readyState != "live":  # stopped meanwhile (its thread gone)
                    raise MediaStreamError from exc
                self._failed(exc)
                continue
            self._failures = 0
            return upscaled

    def _failed(self, exc: Exception) -> None:
        """A frame that failed is skipped; :data:`MAX_FAILURES_IN_A_ROW` end the track."""
        self.stats.failed += 1
        self._failures += 1
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("a live frame failed to upscale (%d in a row): %s", self._failures, reason)
        if self._failures >= MAX_FAILURES_IN_A_ROW:
            self.stop()
            if self._on_failed is not None:
                self._on_failed(reason)
            raise MediaStreamError(reason) from exc

    async def _upscale(self, frame: av.VideoFrame, arrived: float) -> av.VideoFrame:
        """One frame through the model. Its pixels are shrunk, split and put back together on
        the session's own thread, never on the event loop that serves everyone."""
        loop = asyncio.get_running_loop()
        source_size = (frame.width, frame.height)
        frame, planes, spec = await loop.run_in_executor(self._pixels, self._planes, frame)
        result = await self.worker.submit(
            [p[None] for p in planes], spec, self.scale, Priority.LIVE, may_measure=False
        )
        upscaled = await loop.run_in_executor(self._pixels, _output_frame, result, frame)
        done = time.monotonic()
        sent = (frame.width, frame.height)  # as the model took it (shrunk or not)
        self._record(source_size, sent, (upscaled.width, upscaled.height), arrived, result, done)
        return upscaled

    def _planes(self, frame: av.VideoFrame) -> tuple[av.VideoFrame, list, object]:
        frame = self._shrink(frame)
        planes, spec = frame_planes(frame)
        return frame, planes, spec

    def _shrink(self, frame: av.VideoFrame) -> av.VideoFrame:
        cap = size_cap(frame.width, frame.height, self.scale, self.max_output_pixels)
        fraction = min(self.stats.input_fraction, cap)
        if fraction >= 1.0:
            return frame
        width, height = _shrunk(frame.width, frame.height, fraction)
        small = frame.reformat(width=width, height=height, interpolation="AREA")
        small.pts, small.time_base = frame.pts, frame.time_base
        return small

    def _record(self, source_size, sent, out_size, arrived: float, result, done: float) -> None:
        s = self.stats
        s.frames += 1
        s.input_size, s.output_size = source_size, out_size
        s.latency = done - arrived
        s.mark(done)
        inference = result.finished - result.started
        timings = StageTimings(  # no decode: the WebRTC stack decodes before the frame arrives
            wait=max(0.0, result.started - arrived),
            inference=inference,
            encode=max(0.0, done - result.finished),
            total=done - arrived,
        )
        report = FrameReport(s.frames - 1, s.frames, 0, timings, scale=self.scale, size=sent,
                             frame_rate=s.source_fps or None)  # fmt: skip
        self.metrics.observe_frame(report, "live")
        if self._on_size is not None:
            self._on_size(*out_size)
        if result.first_of_shape:  # (one-off work: a compile, kernels chosen; not its speed)
            return
        policy = self.policy
        s.inference = inference if s.inference is None else (
            policy.smoothing * inference + (1 - policy.smoothing) * s.inference)  # fmt: skip
        slow = s.inference > policy.max_latency
        if policy.adaptive and done - s.resized >= policy.hold_seconds:
            smaller = max(policy.min_fraction, s.input_fraction * 0.8)
            # Never shrink so far that the "upscaled" picture is no bigger than the source.
            w, h = _shrunk(*source_size, smaller)
            bigger = w * self.scale > source_size[0] and h * self.scale > source_size[1]
            fraction = s.input_fraction
            if slow and smaller < s.input_fraction and bigger:
                s.input_fraction, slow = smaller, False
            elif s.inference < policy.max_latency / 3 and s.input_fraction < 1.0:
                s.input_fraction = min(1.0, s.input_fraction / 0.8)
            if s.input_fraction != fraction:  # a new size: its own average, held a while
                s.inference, s.resized = None, done
        s.overloaded = slow  # too slow with no smaller input left to try

    def stop(self) -> None:
        super().stop()
        if self._pump is not None:
            self._pump.cancel()
        if self.mirror is not None:
            self.mirror.stop()
        self._pixels.shutdown(wait=False)


def _output_frame(result, frame: av.VideoFrame) -> av.VideoFrame:
    """The upscaled frame of a one-frame batch, timed as its source ``frame``."""
    upscaled = yuv420_video_frame(result.y[0], result.u[0], result.v[0])
    upscaled.pts, upscaled.time_base = frame.pts, frame.time_base or Fraction(1, 90000)
    return upscaled


def _shrunk(width: int, height: int, fraction: float) -> tuple[int, int]:
    """The even-sized input the policy's ``fraction`` gives for a ``width`` x ``height`` source."""
    return max(2, int(width * fraction) // 2 * 2), max(2, int(height * fraction) // 2 * 2)


@dataclass
class Session:
    id: str
    pc: RTCPeerConnection
    scale: int
    track: UpscaleTrack | None = None
    source: FileTrack | None = None
    bitrate: int = 0
    created: float = field(default_factory=time.monotonic)
    reaper: asyncio.TimerHandle | None = None

    def describe(self) -> dict:
        stats = self.track.stats if self.track else LiveStats()
        encoder_bitrate = None
        for sender in self.pc.getSenders():
            encoder = getattr(sender, "_RTCRtpSender__encoder", None)
            if sender.track is self.track and encoder is not None:
                encoder_bitrate = getattr(encoder, "target_bitrate", None)
        return {
            "id": self.id,
            "state": self.pc.connectionState,
            "scale": self.scale,
            "frames": stats.frames,
            "dropped": stats.dropped,
            "fps": round(stats.fps, 2),
            "latency_ms": round(stats.latency * 1000, 1),
            "input": list(stats.input_size),
            "output": list(stats.output_size),
            "input_fraction": round(stats.input_fraction, 3),
            "failed": stats.failed,
            "keeping_up": stats.keeping_up,
            "source_fps": round(stats.source_fps, 2),
            "target_bitrate": self.bitrate,
            "encoder_bitrate": encoder_bitrate,
        }


class LiveSessions:
    """Open peer connections, a limit on how many, and their clean teardown."""

    def __init__(
        self,
        metrics: Metrics,
        limit: int,
        bitrate: BitratePolicy,
        latency: LatencyPolicy,
        *,
        connect_seconds: float = 30.0,
        max_output_pixels: int = 0,
        stun_server: str | None = None,
    ) -> None:
        self.metrics, self.limit, self.bitrate, self.latency = metrics, limit, bitrate, latency
        bitrate.widen_aiortc_limits()  # each session bounds its own encoders
        self.connect_seconds, self.max_output_pixels = connect_seconds, max_output_pixels
        self.stun_server = stun_server
        self.sessions: dict[str, Session] = {}
        self._reaping: set[asyncio.Task] = set()

    @classmethod
    def from_settings(cls, metrics: Metrics, settings: Settings) -> LiveSessions:
        """The service's sessions, with the limits and policies its settings name."""
        bitrate = BitratePolicy(
            bits_per_pixel=settings.live_bits_per_pixel, ceiling=settings.live_max_bitrate
        )
        return cls(
            metrics,
            settings.live_max_sessions,
            bitrate,
            LatencyPolicy(settings.live_max_latency, settings.live_adaptive),
            connect_seconds=settings.live_connect_seconds,
            max_output_pixels=settings.max_output_pixels,
            stun_server=settings.live_stun_server,
        )

    def full(self) -> bool:
        return len(self.sessions) >= self.limit

    async def open(
        self, sdp: str, kind: str, scale: int, worker: InferenceWorker, sample: Path | None = None
    ):
        """Answer an offer. Without ``sample`` the peer's video track is the source; with it,
        the file plays as a live source and the peer receives the original and the upscaled
        track (in that order)."""
        # No ICE servers unless configured: aiortc's default asks a public STUN server.
        servers = [RTCIceServer(self.stun_server)] if self.stun_server else []
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        session = Session(uuid.uuid4().hex, pc, scale)
        self.sessions[session.id] = session
        self.metrics.live_sessions.set(len(self.sessions))
        try:
            self._wire_tracks(session, worker, sample)
        except Exception:
            await self.close(session.id)
            raise

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(session.id)

        try:
            await self._answer(session, sdp, kind, sample is not None)
        except Exception:
            await self.close(session.id)
            raise
        loop = asyncio.get_running_loop()
        session.reaper = loop.call_later(self.connect_seconds, self._reap_later, session.id)
        return session, pc.localDescription

    def _wire_tracks(self, session: Session, worker: InferenceWorker, sample: Path | None) -> None:
        """The upscaling track, fed by the peer's video or by a sample file played live."""
        pc, scale = session.pc, session.scale

        def on_size(width: int, height: int) -> None:
            """Each upscaled frame, before its sender encodes it: the rate its size needs."""
            session.bitrate = self.bitrate.target(width, height)
            for sender in pc.getSenders():
                if sender.track is session.track:
                    self.bitrate.keep(pc, sender, session.bitrate)

        def on_failed(reason: str) -> None:
            log.warning("live session %s closed: its frames fail to upscale (%s)", session.id,
                        reason)  # fmt: skip
            self._in_background(self.close(session.id))

        def upscaled(source: MediaStreamTrack, mirror=None) -> UpscaleTrack:
            session.track = UpscaleTrack(
                source, worker, scale, self.metrics, self.latency, on_size, mirror,
                self.max_output_pixels, on_failed,
            )  # fmt: skip
            return session.track

        if sample is not None:
            session.source = FileTrack(sample)

            def on_original_size(width: int, height: int) -> None:
                """The original picture's sender: the rate of its own size."""
                self.bitrate.keep(pc, original_sender, self.bitrate.target(width, height))

            original = LatestFrameTrack(on_original_size)
            original_sender = pc.addTrack(original)
            pc.addTrack(upscaled(session.source, original))
            return

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and session.track is None:  # one (check_offer)
                pc.addTrack(upscaled(track))

    async def _answer(self, session: Session, sdp: str, kind: str, sample: bool) -> None:
        """Take the offer, check it brings what the session needs, and make the answer."""
        from aiortc import RTCSessionDescription

        pc = session.pc
        check_offer(sdp, sample)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except Exception as exc:
            raise SdpError(f"malformed SDP offer: {type(exc).__name__}: {exc}") from exc
        answer_only_what_is_used(pc, sample)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # an offer the checks let through that aiortc cannot answer
            raise SdpError(f"the offer cannot be answered: {type(exc).__name__}: {exc}") from exc

    def _reap_later(self, session_id: str) -> None:
        self._in_background(self.reap_unconnected(session_id))

    def _in_background(self, work) -> None:
        """Run ``work`` (a coroutine) as a task kept until it ends."""
        task = asyncio.ensure_future(work)
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def reap_unconnected(self, session_id: str) -> None:
        """Close a session whose peer has not connected within ``connect_seconds``."""
        session = self.sessions.get(session_id)
        if session is not None and session.pc.connectionState != "connected":
            log.info(
                "live session %s not connected after %g s (%s); closing it",
                session_id, self.connect_seconds, session.pc.connectionState,
            )  # fmt: skip
            await self.close(session_id)

    async def close(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        self.metrics.live_sessions.set(len(self.sessions))
        if session is None:
            return
        if session.reaper is not None:
            session.reaper.cancel()
        if session.track is not None:
            session.track.stop()
        if session.source is not None:
            session.source.stop()
        with contextlib.suppress(Exception):
            await session.pc.close()
        log.info("live session %s closed", session_id)

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(sid) for sid in list(self.sessions)))
