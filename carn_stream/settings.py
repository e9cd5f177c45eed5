"""The one settings object, read from ``CARN_STREAM_*`` environment variables at the edge.

Command-line flags override it; everything below the edge receives values, never reads the
environment itself.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

PREFIX = "CARN_STREAM_"
ALLOCATORS = ("glibc", "jemalloc")
EXECUTORS = ("process", "inprocess")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
#: ``stun:HOST[:PORT]``: a host name or an IPv4 address (STUN is asked over IPv4).
_STUN = re.compile(r"stun:[A-Za-z0-9.-]+(?::(\d{1,5}))?")
#: An origin as browsers send it: ``scheme://host[:port]``, lower case, no path.
_ORIGIN = re.compile(r"https?://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::\d{1,5})?")


class SettingsError(ValueError):
    """A setting with a value that cannot work; the message names the variable."""


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where downloaded weights and compiled models are kept unless ``CARN_STREAM_CACHE_DIR``
    says otherwise: ``$XDG_CACHE_HOME/carn-stream`` or ``~/.cache/carn-stream``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "carn-stream"


def _flag(value: str) -> bool:
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


@dataclass(frozen=True)
class Settings:
    """Service and CLI configuration. Each field maps to ``CARN_STREAM_<FIELD>``."""

    #: Weights file to use instead of the registry (also read from ``CARN_WEIGHTS``).
    weights: Path | None = None
    #: Folder of further weights files (e.g. from ``carn-stream tune``) that a job may name.
    models_dir: Path | None = None
    #: Where downloaded weights are cached.
    cache_dir: Path = field(default_factory=default_cache_dir)
    #: Mirror for the official weights (the registry's checksum still applies).
    weights_url: str | None = None
    #: Allow downloading weights (and hls.js, for browsers without HLS) when not cached.
    allow_download: bool = True
    #: Mirror of hls.js's npm tarball (``https://`` or ``file://``; its pinned checksum still
    #: applies), which the pages load in browsers that cannot play HLS themselves.
    hls_js_url: str | None = None
    #: Without the official weights, use the bundled ones (lower quality; a warning says so).
    allow_bundled_weights: bool = True
    #: Inference device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
    device: str = "auto"
    #: Inference precision, one of :data:`carn_stream.precisions.NAMES`: ``auto`` (fp16 on
    #: CUDA; on a CPU the fastest mode within 0.05 dB of fp32, measured on first use).
    precision: str = "auto"
    #: Training precision (``train``, ``tune``, a title's model at ingest): ``auto`` (bf16 on
    #: CUDA and on CPUs that compute bf16 in hardware, fp32 elsewhere), ``off`` (fp32),
    #: ``bf16`` or ``fp16``; ``--amp`` overrides it on the command line.
    train_amp: str = "auto"

    #: Memory allocator for ``serve`` and ``upscale``: ``glibc`` (tuned for large buffers) or
    #: ``jemalloc`` (preloaded by relaunching; not with int8).
    allocator: str = "glibc"

    # ---- service
    #: Address and port ``carn-stream serve`` listens on.
    host: str = "127.0.0.1"
    port: int = 8000
    #: Job database and outputs.
    data_dir: Path = Path("carn-stream-data")
    #: When set, every endpoint but health, readiness, metrics and the page shell needs
    #: ``Authorization: Bearer <token>`` (media links are signed with it instead).
    api_token: str | None = None
    #: Lifetime of the signed media links (HLS, MP4) a job hands out when a token is set.
    media_link_seconds: float = 3600.0
    #: Origins (``https://example.com``, or ``*``) whose pages may call the API from a browser
    #: (CORS); a signed media link is readable from any origin without it.
    cors_origins: tuple[str, ...] = ()
    #: Without a token, the API answers only requests addressed to an IP address, localhost or
    #: one of these names (``*``: any): a page whose name is made to point at this machine
    #: (DNS rebinding) reaches nothing but the page shell.
    allowed_hosts: tuple[str, ...] = ()
    #: Non-public addresses that input URLs may still reach (comma-separated IPs).
    allowed_private_hosts: tuple[str, ...] = ()
    #: Accept ``file://`` URLs and plain paths as job inputs.
    allow_local_files: bool = False
    #: Jobs running at the same time (they share one model).
    max_concurrent_jobs: int = 2
    #: Input limits: bytes downloaded, seconds of video, output pixels per frame (judged on
    #: every decoded frame), frames (1 h at 120 fps).
    max_input_bytes: int = 2 * 1024**3
    max_duration_seconds: float = 3600.0
    max_output_pixels: int = 3840 * 2160
    max_frames: int = 432_000
    #: Input fetching: seconds without progress before giving up; redirects followed.
    fetch_timeout_seconds: float = 20.0
    max_redirects: int = 5
    #: Input fetching: seconds for the whole download, and the average rate it must keep
    #: (bytes per second, from ``fetch_timeout_seconds`` on; 0 = no minimum).
    fetch_max_seconds: float = 900.0
    fetch_min_bytes_per_second: int = 10_000
    #: New jobs are refused (507) while the data folder's disk has less free space (bytes).
    min_free_disk_bytes: int = 1024**3
    #: New jobs are refused (503) while this many jobs wait in the queue.
    max_queued_jobs: int = 100
    #: ``POST /videos`` ingests (download, plan) at once; more get 503.
    max_concurrent_ingests: int = 2
    #: Video segment responses sent at once (each streams a file); more get 503.
    max_segment_responses: int = 64
    #: Video segments that players wait for and that have not started (more get 503); also the
    #: most prefetch work waiting to start.
    vod_max_waiting_segments: int = 16
    #: HTTP: seconds a client has to send a whole request (headers and body), counted from
    #: its connection or its previous response; then the connection is closed.
    http_read_timeout_seconds: float = 10.0
    #: HTTP: seconds a response may wait for a client that takes none of it (its socket's
    #: buffers full); then the connection is dropped and the response's file and turn freed.
    http_send_timeout_seconds: float = 30.0
    #: HTTP: open connections at most; one more closes the oldest connection still sending
    #: its request (503 when every connection is busy with a request).
    http_max_connections: int = 1000
    #: A job interrupted by a crash is run again this many times, then marked failed.
    max_attempts: int = 2
    #: Finished jobs and their outputs are deleted after this many hours (0 = never).
    retention_hours: float = 168.0
    #: Frames per inference batch (0 = 1 on CPU, 8 on CUDA).
    batch_size: int = 0
    #: Target duration of a segment, the unit of work (on keyframes when the input has one at
    #: least every 3 targets; a longer GOP is cut on a keyframe near it, else between
    #: keyframes; at least 1).
    segment_seconds: float = 4.0
    #: Make frames the decoder flags interlaced (480i/576i/1080i) progressive before they are
    #: upscaled (FFmpeg's ``bwdif``, one frame per frame); off for progressive video that is
    #: flagged interlaced.
    deinterlace: bool = True
    #: Where segments run: ``process`` (a supervised worker process that owns its own model:
    #: a crash on a hostile input ends that process, not the service) or ``inprocess``.
    executor: str = "process"
    #: Segments the executor works on at once (decode of one overlaps encode of another).
    worker_slots: int = 2
    #: Open files a worker process may hold.
    worker_max_open_files: int = 1024
    #: A segment whose worker crashed (or that failed unexpectedly) runs again up to this many
    #: times before its job fails.
    segment_attempts: int = 3
    #: Videos served on request (``/videos``): disk budget of their segment cache in bytes
    #: (least recently used segments are evicted), and segments made ahead of a player.
    vod_cache_bytes: int = 10 * 1024**3
    vod_prefetch_segments: int = 2
    #: A player none of whose requests has come, ended or still waits for this long keeps no
    #: prefetch work ahead of it.
    vod_viewer_idle_seconds: float = 60.0
    #: A video ingested with ``"tune": true`` is fine-tuned on this many of its frames for
    #: this many steps (in a child process), then served with its own weights.
    vod_tune_frames: int = 77
    vod_tune_steps: int = 200
    #: Fine-tunes (and titles' models) trained at once; the rest wait their turn, queued.
    vod_max_concurrent_tunes: int = 1
    #: A video stored small (``"store"``) gets a report measured on this many of its frames.
    vod_report_frames: int = 12
    #: A Ray cluster to run segments on (``auto``: the cluster started on this machine with
    #: ``ray start``); when set, it replaces ``executor``.
    ray_address: str | None = None
    #: Segments one Ray actor (one per GPU) works on at once, so transfers overlap compute.
    ray_segments_per_actor: int = 2
    #: On nodes without GPUs, one CPU actor per unit of this custom resource.
    ray_cpu_resource: str = "carn_worker"

    # ---- live mode (WebRTC)
    #: Live sessions open at once.
    live_max_sessions: int = 4
    #: A live session whose peer has not connected within this many seconds is closed.
    live_connect_seconds: float = 30.0
    #: Inference time per frame above which live input is shrunk (seconds).
    live_max_latency: float = 0.5
    #: Shrink the input (down to half size) while inference is slower than the budget.
    live_adaptive: bool = True
    #: Live encoder bitrate: bits per output pixel per frame at 30 fps, and its upper bound.
    live_bits_per_pixel: float = 0.1
    live_max_bitrate: int = 20_000_000
    #: Gather WebRTC ICE candidates only on these addresses (comma-separated; empty = all).
    live_ice_hosts: tuple[str, ...] = ()
    #: A STUN server (``stun:HOST[:PORT]``) the service asks for its public address, for a
    #: service behind NAT; unset, it offers its own addresses and contacts no outside server.
    live_stun_server: str | None = None
    #: Folder of video files the live page can play as a live source (unset = camera only).
    live_samples_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {"cache_dir": default_cache_dir(env)}
        weights = env.get(f"{PREFIX}WEIGHTS") or env.get("CARN_WEIGHTS")
        if weights:
            values["weights"] = Path(weights)
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or f.name == "weights":
                continue
            try:
                values[f.name] = _parse(f.name, raw)
            except ValueError as exc:
                if f.type in ("int", "float"):  # int("eighty"): say what the setting takes
                    raise SettingsError(_refusal(f.name, raw)) from None
                raise SettingsError(f"{PREFIX}{f.name.upper()}: {exc}") from exc
        return cls(**values)

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the variable and what it accepts."""
        from carn_stream.precisions import NAMES as PRECISIONS
        from carn_stream.precisions import TRAIN_AMPS

        valid: dict[str, bool] = {
            "precision": self.precision in PRECISIONS,
            "train_amp": self.train_amp in TRAIN_AMPS,
            "device": bool(_DEVICE.fullmatch(self.device)),
            "allocator": self.allocator in ALLOCATORS,
            "executor": self.executor in EXECUTORS,
            "port": 0 <= self.port <= 65535,
            "max_concurrent_jobs": self.max_concurrent_jobs >= 1,
            "max_attempts": self.max_attempts >= 1,
            "segment_attempts": self.segment_attempts >= 1,
            "ray_segments_per_actor": self.ray_segments_per_actor >= 1,
            "ray_cpu_resource": bool(self.ray_cpu_resource),
            "worker_slots": self.worker_slots >= 1,
            "worker_max_open_files": self.worker_max_open_files >= 64,
            "batch_size": self.batch_size >= 0,
            "segment_seconds": self.segment_seconds >= 1,
            "max_input_bytes": self.max_input_bytes > 0,
            "max_output_pixels": self.max_output_pixels > 0,
            "max_frames": self.max_frames > 0,
            "max_concurrent_ingests": self.max_concurrent_ingests >= 1,
            "max_segment_responses": self.max_segment_responses >= 1,
            "vod_max_waiting_segments": self.vod_max_waiting_segments >= 1,
            "http_read_timeout_seconds": self.http_read_timeout_seconds > 0,
            "http_send_timeout_seconds": self.http_send_timeout_seconds > 0,
            "http_max_connections": self.http_max_connections >= 16,
            "live_max_sessions": self.live_max_sessions >= 0,
            "vod_cache_bytes": self.vod_cache_bytes > 0,
            "vod_prefetch_segments": self.vod_prefetch_segments >= 0,
            "vod_viewer_idle_seconds": self.vod_viewer_idle_seconds > 0,
            "vod_tune_frames": self.vod_tune_frames >= 4,
            "vod_tune_steps": self.vod_tune_steps >= 1,
            "vod_max_concurrent_tunes": self.vod_max_concurrent_tunes >= 1,
            "vod_report_frames": self.vod_report_frames >= 2,
            "media_link_seconds": self.media_link_seconds > 0,
            "max_duration_seconds": self.max_duration_seconds > 0,
            "fetch_timeout_seconds": self.fetch_timeout_seconds > 0,
            "fetch_max_seconds": self.fetch_max_seconds > 0,
            "fetch_min_bytes_per_second": self.fetch_min_bytes_per_second >= 0,
            "max_redirects": self.max_redirects >= 0,
            "min_free_disk_bytes": self.min_free_disk_bytes >= 0,
            "max_queued_jobs": self.max_queued_jobs >= 1,
            "retention_hours": self.retention_hours >= 0,
            "live_connect_seconds": self.live_connect_seconds > 0,
            "live_max_latency": self.live_max_latency > 0,
            "live_bits_per_pixel": self.live_bits_per_pixel > 0,
            "live_max_bitrate": self.live_max_bitrate > 0,
            "live_ice_hosts": all(map(_is_ip_address, self.live_ice_hosts)),
            "live_stun_server": self.live_stun_server is None
            or _is_stun_url(self.live_stun_server),
            "cors_origins": all(map(_is_origin, self.cors_origins)),
            "allowed_hosts": all(map(_HOST_NAME.fullmatch, self.allowed_hosts)),
            "hls_js_url": self.hls_js_url is None
            or self.hls_js_url.startswith(("http://", "https://", "file://")),
        }
        for name, ok in valid.items():
            if not ok:
                raise SettingsError(_refusal(name, getattr(self, name)))

    def with_overrides(self, **overrides: object) -> Settings:
        """A copy with the given fields replaced; ``None`` leaves a field as it is."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def with_options(self, **options: object) -> Settings:
        """:meth:`with_overrides` for a command's options: a refusal names the option the
        user gave (``--device``), not the variable."""
        try:
            return self.with_overrides(**options)
        except SettingsError as exc:
            text = str(exc)
            for name, value in options.items():
                if value is not None:
                    text = text.replace(f"{PREFIX}{name.upper()} ", f"--{name.replace('_', '-')} ")
            raise SettingsError(text) from None


#: What each checked setting takes, as its refusal says it.
_TAKES: dict[str, str] = {
    "device": "auto, cpu, cuda or cuda:N",
    "allocator": "one of " + ", ".join(ALLOCATORS),
    "executor": "one of " + ", ".join(EXECUTORS),
    "port": "a port number (1-65535; 0 picks a free one)",
    "max_concurrent_jobs": "a whole number, 1 or more",
    "max_attempts": "a whole number, 1 or more",
    "segment_attempts": "a whole number, 1 or more",
    "ray_segments_per_actor": "a whole number, 1 or more",
    "ray_cpu_resource": "a resource name",
    "worker_slots": "a whole number, 1 or more",
    "worker_max_open_files": "a whole number, 64 or more",
    "batch_size": "a whole number, 0 (automatic) or more",
    "segment_seconds": "a number of seconds, at least 1",
    "max_input_bytes": "a positive whole number of bytes",
    "max_output_pixels": "a positive whole number of pixels",
    "max_frames": "a positive whole number of frames",
    "max_concurrent_ingests": "a whole number, 1 or more",
    "max_segment_responses": "a whole number, 1 or more",
    "vod_max_waiting_segments": "a whole number, 1 or more",
    "http_read_timeout_seconds": "a positive number of seconds",
    "http_send_timeout_seconds": "a positive number of seconds",
    "http_max_connections": "a whole number, 16 or more",
    "live_max_sessions": "a whole number, 0 or more",
    "vod_cache_bytes": "a positive whole number of bytes",
    "vod_prefetch_segments": "a whole number, 0 or more",
    "vod_viewer_idle_seconds": "a positive number of seconds",
    "vod_tune_frames": "a whole number, 4 or more",
    "train_amp": "one of auto, off, bf16, fp16",
    "vod_tune_steps": "a whole number, 1 or more",
    "vod_max_concurrent_tunes": "a whole number, 1 or more",
    "vod_report_frames": "a whole number, 2 or more",
    "media_link_seconds": "a positive number of seconds",
    "max_duration_seconds": "a positive number of seconds",
    "fetch_timeout_seconds": "a positive number of seconds",
    "fetch_max_seconds": "a positive number of seconds",
    "fetch_min_bytes_per_second": "a whole number of bytes per second, 0 or more",
    "max_redirects": "a whole number, 0 or more",
    "min_free_disk_bytes": "a whole number of bytes, 0 or more",
    "max_queued_jobs": "a whole number, 1 or more",
    "retention_hours": "a number of hours, 0 (keep) or more",
    "live_connect_seconds": "a positive number of seconds",
    "live_max_latency": "a positive number of seconds",
    "live_bits_per_pixel": "a positive number",
    "live_max_bitrate": "a positive whole number of bits per second",
    "live_ice_hosts": "IP addresses of this machine, comma-separated",
    "live_stun_server": "a STUN URL, stun:HOST or stun:HOST:PORT (unset: none)",
    "allowed_hosts": "comma-separated host names in lower case (no port), or '*'",
    "cors_origins": "comma-separated origins, each scheme://host[:port] in lower case and "
    "without a path, or '*' (any)",
    "hls_js_url": "an http://, https:// or file:// URL of hls.js's npm tarball (unset: the "
    "npm registry's)",
}


_HOST_NAME = re.compile(r"\*|[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def _is_origin(origin: str) -> bool:
    return origin == "*" or bool(_ORIGIN.fullmatch(origin))


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_stun_url(url: str) -> bool:
    match = _STUN.fullmatch(url)
    return match is not None and 1 <= int(match.group(1) or 3478) <= 65535


def _refusal(name: str, value: object) -> str:
    """``CARN_STREAM_PORT must be a port number (...); got 'eighty'``."""
    if name == "precision":
        from carn_stream.precisions import NAMES

        takes = "one of " + ", ".join(NAMES)
    else:
        kind = next(f.type for f in fields(Settings) if f.name == name)
        takes = _TAKES.get(name, "a whole number" if kind == "int" else "a number")
    if isinstance(value, tuple):  # as it was written
        value = ",".join(value)
    return f"{PREFIX}{name.upper()} must be {takes}; got {value!r}"


def _parse(name: str, raw: str) -> object:
    if name == "precision":
        from carn_stream.precisions import precision

        return precision(raw).name
    kind = next(f.type for f in fields(Settings) if f.name == name)
    if kind.startswith("Path"):
        return Path(raw)
    if kind == "bool":
        return _flag(raw)
    if kind == "int":
        return int(raw)
    if kind == "float":
        value = float(raw)
        if not math.isfinite(value):  # "inf" and "nan" parse, and mean nothing here
            raise ValueError(raw)
        return value
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw or None if "None" in kind else raw
