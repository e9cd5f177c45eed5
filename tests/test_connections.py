"""The HTTP protocol's guards, on a real uvicorn server on loopback: a client that stops
taking its response loses the connection, and the response's turn is given back."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from carn_stream.server.connections import guarded_protocol
from carn_stream.server.streaming import FileStream, OpenFile, Turns

SIZE = 8 * 1024 * 1024


@contextlib.contextmanager
def serving(app, send_timeout: float):
    """``app`` under uvicorn with the guarded protocol, on 127.0.0.1; yields the port."""
    protocol = guarded_protocol(read_timeout=5.0, max_connections=50, send_timeout=send_timeout)
    server = uvicorn.Server(uvicorn.Config(app, http=protocol, lifespan="off", log_level="error"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def stalled_request(port: int, path: str) -> socket.socket:
    """A GET whose client never reads (and takes at most a few KB into its buffers)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def get(port: int, path: str) -> tuple[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, len(response.read())
    finally:
        conn.close()


def test_a_client_that_stops_reading_loses_its_response_and_its_turn(tmp_path):
    """Before, such clients kept every segment response's turn for as long as they stayed
    connected: every other player got 503, cached segments included."""
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (SIZE // 256))
    turns, send_timeout = Turns(1), 1.0

    async def send_file(request):
        if not turns.take():
            return PlainTextResponse("busy", status_code=503)
        return FileStream(OpenFile.of(big), "application/octet-stream", on_close=turns.give)

    app = Starlette(routes=[Route("/big", send_file)])
    with serving(app, send_timeout) as port:
        sock = stalled_request(port, "/big")
        try:
            time.sleep(0.3)
            assert get(port, "/big")[0] == 503  # the stalled client holds the only turn
            freed = None
            start = time.monotonic()
            while time.monotonic() - start < send_timeout + 5:
                if turns.held == 0:
                    freed = time.monotonic() - start
                    break
                time.sleep(0.05)
            assert freed is not None, "the stalled response was never dropped"
            assert get(port, "/big") == (200, SIZE)  # a reading client gets it all
            sock.settimeout(5)
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    received += len(chunk)
            assert received < SIZE  # the connection ended with the response cut short
        finally:
            sock.close()
