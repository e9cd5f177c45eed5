"""Test harness for the service: a real ``carn-stream serve`` process and a media file server,
both on 127.0.0.1, with bounded waits."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from tests.helpers import REPO_ROOT, QuietHandler, official_weights_path, serve_directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int, method: str, path: str, body: Any = None, headers: dict | None = None,
    raw: bytes | None = None, timeout: float = 30,
) -> Response:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class ServerProcess:
    """``carn-stream serve`` in a subprocess on a free loopback port."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "CARN_WEIGHTS": str(official_weights_path()),
            "CARN_STREAM_DEVICE": "cpu",
            "CARN_STREAM_ALLOWED_PRIVATE_HOSTS": "127.0.0.1",
            "CARN_STREAM_FETCH_TIMEOUT_SECONDS": "2",
            "CARN_STREAM_SEGMENT_SECONDS": "1",
            # The mode the tests mean on any CPU (auto would measure, and differ by CPU), and
            # a cache of this server's own.
            "CARN_STREAM_PRECISION": "fp32",
            "CARN_STREAM_CACHE_DIR": str(data_dir.parent / f"cache-{data_dir.name}"),
            **env,
        }
        self.log = data_dir.parent / f"server-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.headers: dict[str, str] = {}  #: sent with every call (e.g. the API token)

    def start(self, timeout: float = 90) -> ServerProcess:
        self.launch()
        wait_for(self._ready, timeout, f"the server on port {self.port} to be ready")
        return self

    def launch(self) -> ServerProcess:
        """Start the process without waiting for it to be ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "carn_stream.cli", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir)],
            cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"server exited early:\n{self.log.read_text()[-3000:]}")
        try:
            return request(self.port, "GET", "/readyz", timeout=2).status == 200
        except OSError:
            return False

    def call(self, method: str, path: str, body: Any = None, **kwargs) -> Response:
        kwargs["headers"] = {**self.headers, **(kwargs.get("headers") or {})}
        return request(self.port, method, path, body, **kwargs)

    def job(self, job_id: str) -> dict:
        return self.call("GET", f"/jobs/{job_id}").json()

    def wait_job(self, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
        return wait_for(
            lambda: (j := self.job(job_id))["state"] in states and j, timeout,
            f"job {job_id} to reach {states}",
        )  # fmt: skip

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)


class _MediaHandler(QuietHandler):
    """Static files, plus /slow/NAME (stalls), /big (claims a huge body), /redirect?to=URL, and
    hostile sources: /trickle (a byte every 2 s), /drip (fast enough, but never ends) and
    /liar (claims 1 MB, sends 100 bytes). ``closed_at`` records when a download of a hostile
    source was dropped by the client."""

    closed_at: ClassVar[dict[str, float]] = {}

    def _endless(self, chunk: bytes, interval: float) -> None:
        self.send_response(200)  # no length: the body ends when the connection does
        self.end_headers()
        try:
            while True:
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(interval)
        except OSError:
            type(self).closed_at[self.path] = time.monotonic()

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path == "/trickle":
            self._endless(b"\0", 2.0)
        elif parsed.path == "/drip":
            self._endless(b"\0" * 8192, 0.1)
        elif parsed.path == "/liar":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"\0" * 100)
            self.wfile.flush()
            self.close_connection = True
        elif parsed.path == "/redirect":
            target = urllib.parse.parse_qs(parsed.query)["to"][0]
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
        elif parsed.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(50 * 1024**3))
            self.end_headers()
        elif parsed.path.startswith("/slow/"):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"\0" * 1000)
            self.wfile.flush()
            time.sleep(5)  # longer than the server's fetch timeout (2 s in tests)
        else:
            super().do_GET()


def media_server(root: Path):
    """The media file server: a context manager yielding its base URL."""
    return serve_directory(root, _MediaHandler)
