"""Build the CARN-M the settings ask for, with its weights resolved and loaded."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from carn_stream.model import CARN, CARNMWeights, WeightsError, carn_m, load_weights
from carn_stream.model.inference import pick_device
from carn_stream.model.named_weights import weights_file
from carn_stream.model.weights import WeightsSource, sha256_of
from carn_stream.pipeline.engine.infer import Engine, EngineConfig, InferenceWorker
from carn_stream.settings import Settings

log = logging.getLogger(__name__)


class DownloadReport:
    """Download progress: redrawn in place on the CLI's stderr, or logged (the service) at
    the start, every ``interval`` seconds and at the end."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._last: float | None = None
        self._open = False  #: a console line is drawn and not yet ended

    def __call__(self, done: int, total: int | None) -> None:
        size = f"{done / 1e6:.1f}" + (f"/{total / 1e6:.1f}" if total else "") + " MB"
        if not _logging_configured():
            sys.stderr.write(f"\rdownloading the official CARN-M weights: {size}")
            sys.stderr.flush()
            self._open = True
            if total and done >= total:
                self.end()
            return
        now = time.monotonic()
        finished = bool(total and done >= total)
        if self._last is None or finished or now - self._last >= self.interval:
            self._last = now
            log.info("downloading the official CARN-M weights: %s", size)

    def end(self) -> None:
        """End the console line, however the download went (what follows starts afresh)."""
        if self._open:
            self._open = False
            sys.stderr.write("\n")
            sys.stderr.flush()


def _logging_configured() -> bool:
    return bool(logging.getLogger().handlers)


def _warn(message: str) -> None:
    """Once: logged where logging is set up (the service), else on stderr (the CLI)."""
    if _logging_configured():
        log.warning("%s", message)
    else:
        print(f"carn-stream: warning: {message}", file=sys.stderr)


def load_model(settings: Settings, quiet: bool = False) -> tuple[CARN, WeightsSource]:
    """Multi-scale CARN-M (group 4) in eval mode on the settings' device, and which weights it
    holds (with the reason when the bundled weights stand in for the official ones).

    ``quiet``: neither the download's progress nor the bundled weights' warning is said here,
    because another loader of the same weights says them (the service's own worker, for the
    worker process beside it)."""
    model = carn_m()
    notes: list[str] = []
    report = DownloadReport()

    def on_fallback(message: str) -> None:
        notes.append(message)
        if not quiet:
            report.end()
            _warn(message)

    fallback = CARNMWeights.BUNDLED.value if settings.allow_bundled_weights else None
    try:
        path = load_weights(
            model,
            settings.weights if settings.weights is not None else CARNMWeights.DEFAULT,
            cache_dir=settings.cache_dir,
            url=settings.weights_url,
            allow_download=settings.allow_download,
            progress=None if quiet else report,
            fallback=fallback,
            on_fallback=on_fallback,
        )
    finally:
        report.end()  # an error line starts on a line of its own
    source = WeightsSource(path, notes[0] if notes else None)
    return model.eval().to(pick_device(settings.device)), source


def weights_in_use(settings: Settings) -> str:
    """What identifies the weights a model the settings build holds, once one has been loaded
    (the official file is in the cache then, where it could be had): the checksum of the file
    named, else of the cached official file, else the bundled weights'."""
    if settings.weights is not None:
        return f"sha256:{sha256_of(Path(settings.weights))}"
    cached = settings.cache_dir / CARNMWeights.DEFAULT.value.filename
    if cached.is_file():
        return f"sha256:{sha256_of(cached)}"
    return f"sha256:{CARNMWeights.BUNDLED.value.sha256}"


class NamedWeightsLoader:
    """``name -> CARN-M`` for the weights jobs and videos name (:mod:`named_weights`), with
    the stamp that tells a worker the file was written again."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _path(self, name: str) -> Path:
        return weights_file(name, self.settings.models_dir, self.settings.data_dir)

    def __call__(self, name: str) -> CARN:
        model = carn_m()
        load_weights(model, self._path(name))
        return model.eval()

    def stamp(self, name: str) -> tuple[int, int, int] | None:
        """The file's inode, size and modification time (None: not there; loading says why)."""
        try:
            found = self._path(name).stat()
        except (OSError, WeightsError):
            return None
        return found.st_ino, found.st_size, found.st_mtime_ns


def start_worker(
    settings: Settings, tile: int | None = None, quiet: bool = False
) -> InferenceWorker:
    """Load the model and start the inference worker thread that owns it (also the factory a
    worker process calls, so it sets up the allocator as the command line does); ``quiet`` as
    for :func:`load_model`."""
    from carn_stream.allocator import tune_allocator

    tune_allocator()
    model, source = load_model(settings.with_overrides(device="cpu"), quiet)
    config = EngineConfig(
        device=settings.device,
        precision=settings.precision,
        tile=tile,
        cache_dir=settings.cache_dir,
    )
    return InferenceWorker(Engine(model, config, source), NamedWeightsLoader(settings))
