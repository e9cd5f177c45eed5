"""Every Prometheus metric of the service, defined once (``carn_stream_<thing>_<unit>``).

Labels come from small fixed sets: ``stage``, ``mode`` (job/live), ``state``, ``method``,
``route`` (the route template, never a job id) and ``status`` class.
"""

from __future__ import annotations

import collections
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from carn_stream.pipeline.run import STAGES, FrameReport

#: Frame latencies run from milliseconds (GPU) to many seconds (large frames on a CPU).
FRAME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The service's metrics in their own registry (one per app, so tests stay independent)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.stage_seconds = Histogram(
            "carn_stream_stage_seconds",
            "Per-frame time spent in each pipeline stage",
            ["stage", "mode"],
            buckets=FRAME_BUCKETS,
            registry=r,
        )
        self.frame_seconds = Histogram(
            "carn_stream_frame_seconds",
            "End-to-end latency per frame, decode to muxed",
            ["mode"],
            buckets=FRAME_BUCKETS,
            registry=r,
        )
        self.batch_frames = Histogram(
            "carn_stream_inference_batch_frames",
            "Frames per inference batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.frames = Counter("carn_stream_frames", "Frames upscaled", ["mode"], registry=r)
        self.fps = Gauge(
            "carn_stream_fps", "Frames per second over the last few seconds", ["mode"], registry=r
        )
        self.jobs = Gauge("carn_stream_jobs", "Jobs by state", ["state"], registry=r)
        self.queue_depth = Gauge("carn_stream_queue_depth", "Jobs waiting to run", registry=r)
        # Live mode (WebRTC sessions): sessions open now, and frames skipped to keep latency low.
        self.live_sessions = Gauge(
            "carn_stream_live_sessions", "Live upscaling sessions open", registry=r
        )
        self.dropped_frames = Counter(
            "carn_stream_dropped_frames",
            "Frames skipped to keep live latency bounded",
            ["mode"],
            registry=r,
        )
        self.http_requests = Counter(
            "carn_stream_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "carn_stream_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=r,
        )
        self._rate: dict[str, collections.deque[float]] = {}
        self._add_vod(r)

    def _add_vod(self, r: CollectorRegistry) -> None:
        """Videos served on request: segments made when players ask (``rendition`` label:
        ``original``, ``x2``, ``x3``, ``x4``)."""
        self.vod_realtime_factor = Histogram(
            "carn_stream_vod_realtime_factor",
            "Time to make a segment over its duration (below 1 keeps up with playback)",
            ["rendition"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 4, 8, 16),
            registry=r,
        )
        self.vod_first_segment_seconds = Histogram(
            "carn_stream_vod_first_segment_seconds",
            "Time from a player's request to the segment that starts its playback or its seek",
            ["rendition"],
            buckets=FRAME_BUCKETS,
            registry=r,
        )
        self.vod_cache_hits = Counter(
            "carn_stream_vod_cache_hits", "Segment requests served from the cache", ["rendition"],
            registry=r,
        )  # fmt: skip
        self.vod_cache_misses = Counter(
            "carn_stream_vod_cache_misses", "Segment requests not in the cache", ["rendition"],
            registry=r,
        )  # fmt: skip
        self.vod_cache_evictions = Counter(
            "carn_stream_vod_cache_evictions", "Segments evicted to keep the cache in budget",
            registry=r,
        )  # fmt: skip
        self.vod_shared_requests = Counter(
            "carn_stream_vod_shared_requests",
            "Segment requests that joined a computation already under way",
            ["rendition"],
            registry=r,
        )
        self.vod_segments_made = Counter(
            "carn_stream_vod_segments_made", "Segments made (upscaled or remuxed)",
            ["rendition", "reason"], registry=r,
        )  # fmt: skip
        self.vod_prefetch_depth = Gauge(
            "carn_stream_vod_prefetch_depth", "Segments queued or being made ahead of players",
            registry=r,
        )  # fmt: skip
        self.vod_cache_bytes = Gauge(
            "carn_stream_vod_cache_bytes", "Bytes of segments in the cache", registry=r
        )

    def observe_frame(self, report: FrameReport, mode: str = "job") -> None:
        for stage in STAGES:
            self.stage_seconds.labels(stage, mode).observe(report.timings[stage])
        self.frame_seconds.labels(mode).observe(report.timings["total"])
        self.frames.labels(mode).inc()
        if report.batch_start:
            self.batch_frames.observe(report.batch_frames)
        if mode not in self._rate:
            self._rate[mode] = collections.deque()
            self.fps.labels(mode).set_function(lambda: self._recent_rate(mode))
        self._rate[mode].append(time.monotonic())

    def _recent_rate(self, mode: str, window: float = 5.0) -> float:
        stamps = self._rate[mode]
        while stamps and stamps[0] < time.monotonic() - window:
            stamps.popleft()
        return len(stamps) / window
