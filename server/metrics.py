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
        self.segment_retries = Counter(
            "carn_stream_segment_retries",
            "Segment attempts that failed and were run again (a worker or node was lost)",
            registry=r,
        )
        self.cluster = ClusterMetrics(r)

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


# ---- cluster (segments on Ray actors) -------------------------------------------------------

#: A segment takes seconds (GPU) to minutes (a long segment on a CPU).
SEGMENT_BUCKETS = (0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


class ClusterMetrics:
    """Per-node segment metrics; ``node`` labels are Ray node names (bounded by the cluster).

    It is the Ray executor's observer: told when a segment starts and ends on a node.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.segment_seconds = Histogram(
            "carn_stream_cluster_segment_seconds",
            "Seconds from handing a segment to a node's actor until its encoded segment is back",
            ["node"],
            buckets=SEGMENT_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "carn_stream_cluster_segments_in_flight",
            "Segments at a node's actors now",
            ["node"],
            registry=registry,
        )
        self.lost = Counter(
            "carn_stream_cluster_segments_lost",
            "Segment attempts lost with their actor or node",
            ["node"],
            registry=registry,
        )

    def started(self, node: str) -> None:
        self.in_flight.labels(node).inc()

    def finished(self, node: str, seconds: float | None, lost: bool) -> None:
        self.in_flight.labels(node).dec()
        if lost:
            self.lost.labels(node).inc()
        elif seconds is not None:
            self.segment_seconds.labels(node).observe(seconds)
