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
