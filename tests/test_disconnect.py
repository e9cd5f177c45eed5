"""Work for a request and its client's hang-up (``server/disconnect.py``), in process: who gets
the work's result, and what happens to a result nobody gets."""

from __future__ import annotations

import asyncio

import pytest

from carn_stream.server.disconnect import ClientGone, unless_disconnected


def _client(hangs_up: asyncio.Event):
    async def receive() -> dict:
        await hangs_up.wait()
        return {"type": "http.disconnect"}

    return receive


def test_the_result_goes_to_the_caller_and_is_not_discarded():
    async def go():
        discarded: list[str] = []
        result = await unless_disconnected(
            _client(asyncio.Event()), asyncio.sleep(0, result="file"), discarded.append
        )
        return result, discarded

    assert asyncio.run(go()) == ("file", [])


def test_a_client_that_hangs_up_first_cancels_the_work():
    async def go():
        hangs_up, started = asyncio.Event(), asyncio.Event()

        async def work() -> str:
            started.set()
            await asyncio.sleep(60)
            return "file"

        call = asyncio.ensure_future(unless_disconnected(_client(hangs_up), work()))
        await started.wait()
        hangs_up.set()
        with pytest.raises(ClientGone):
            await call

    asyncio.run(asyncio.wait_for(go(), 10))


def test_a_result_made_as_the_request_is_cancelled_is_discarded():
    """The work finishes in the loop turn the request is cancelled in: its result (an opened
    file in the service) is handed to ``discard`` instead of being dropped unclosed."""

    async def go():
        discarded: list[str] = []
        made = asyncio.get_running_loop().create_future()
        call = asyncio.ensure_future(
            unless_disconnected(_client(asyncio.Event()), made, discarded.append)
        )
        for _ in range(3):
            await asyncio.sleep(0)  # the call waits on the work and the client
        made.set_result("file")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return discarded

    assert asyncio.run(go()) == ["file"]
