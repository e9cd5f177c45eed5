"""Every Prometheus metric of the service, defined once (``carn_stream_<thing>_<unit>``).

Labels come from small fixed sets: ``stage``, ``mode`` (job/live), ``state``, ``method``,
``route`` (the route template, never a job id) and ``status`` class. The stages (a frame's
time, per frame; docs/SERVICE.md):

- ``decode``: demuxing and decoding the frame (jobs; live frames arrive decoded);
- ``wait``: from its batch being formed (live: from its arrival) to the model starting on
  it, i.e. how long the frame waited for the model;
- ``inference``: the model's work on the frame's batch, colour conversion included;
- ``encode``: from the model's result to the frame being muxed (live: handed to WebRTC).

``carn_stream_frame_seconds`` is decode + (batch formed to muxed): a frame's own latency.
Time a decoded frame spends in the read-ahead buffer before it is batched is left out: it is
backpressure (the decoder running ahead of the model), not latency.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from carn_stream.pipeline.run import FrameReport
from carn_stream.progress_rate import RateMeter
from carn_stream.server.speed import SpeedBook

# One `_created` series per labelled child doubled the exposition for no use (process-wide).
disable_created_metrics()

#: Frame latencies run from milliseconds (GPU) to many seconds (large frames on a CPU).
FRAME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Time to make a video's segment over its duration: well below 1 on a GPU; on 2 CPU cores
#: measured from 0.65 (160x90 x2) through 2.6 (320x180 x2) and 14-48 (loaded, bf16 and fp32)
#: to 28 (x2 on an AVX2-only CPU); larger inputs on a CPU run into the hundreds
#: (docs/PERFORMANCE.md).
REALTIME_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 12, 20, 30, 50, 80, 120, 250,
)  # fmt: skip


class Metrics:
    """The service's metrics in their own registry (one per app, so tests stay independent)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.stage_seconds = Histogram(
            "carn_stream_stage_seconds",
            "Per-frame seconds: decode, wait (for the model), inference, encode (to muxed)",
            ["stage", "mode"],
            buckets=FRAME_BUCKETS,
            registry=r,
        )
        self.frame_seconds = Histogram(
            "carn_stream_frame_seconds",
            "Latency per frame: decode, then batch formed to muxed (read-ahead excluded)",
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
            "carn_stream_fps", "Frames per second, weighted over the last 5 s", ["mode"], registry=r
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
            "carn_stream_http_request_duration_seconds",
            "HTTP request latency, to the response's start",
            ["method", "route"],
            registry=r,
        )
        self._rate: dict[str, RateMeter] = {}
        #: the model's speed per input size, from the same frame reports (``/readyz``)
        self.speed = SpeedBook()
        self.segment_retries = Counter(
            "carn_stream_segment_retries",
            "Segment attempts that failed and were run again (a worker or node was lost)",
            registry=r,
        )
        self.cluster = ClusterMetrics(r)
        self._add_vod(r)

    def _add_vod(self, r: CollectorRegistry) -> None:
        """Videos served on request: segments made when players ask (``rendition`` label:
        ``original``, ``x2``, ``x3``, ``x4``; ``audio`` for any audio rendition)."""
        self.vod_realtime_factor = Histogram(
            "carn_stream_vod_realtime_factor",
            "Time to make a segment over its duration (below 1 keeps up with playback)",
            ["rendition"],
            buckets=REALTIME_BUCKETS,
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
        for stage, seconds in report.timings.stages().items():  # live frames: no decode
            self.stage_seconds.labels(stage, mode).observe(seconds)
        self.frame_seconds.labels(mode).observe(report.timings.total)
        self.frames.labels(mode).inc()
        if report.batch_start:
            self.batch_frames.observe(report.batch_frames)
        self.speed.observe(report, "live" if mode == "live" else "segments")
        if mode not in self._rate:
            meter = self._rate[mode] = RateMeter()
            self.fps.labels(mode).set_function(lambda: meter.rate() or 0.0)
        self._rate[mode].add()


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
