"""Live offers: what a camera or sample session takes, checked before the peer connection does.

The offers are made by aiortc (``createOffer`` only: nothing is gathered or sent), then edited
the way a hostile or careless client would.
"""

from __future__ import annotations

import asyncio

import pytest

from carn_stream.server.offers import MAX_CANDIDATES, OfferRefused, SdpError, check_offer
from tests.helpers import client_peer


def offer(*sections: tuple[str, str], channel: bool = False) -> str:
    """An aiortc offer with a transceiver per (kind, direction), and a data channel."""

    async def make() -> str:
        pc = client_peer()
        for kind, direction in sections:
            pc.addTransceiver(kind, direction=direction)
        if channel:
            pc.createDataChannel("x")
        try:
            return (await pc.createOffer()).sdp
        finally:
            await pc.close()

    return asyncio.run(make())


def with_candidates(sdp: str, count: int) -> str:
    lines = [
        f"a=candidate:{k} 1 udp 2130706431 127.0.0.1 {40000 + k} typ host" for k in range(count)
    ]
    head, _, tail = sdp.partition("a=ice-ufrag")
    return head + "\r\n".join(lines) + "\r\na=ice-ufrag" + tail


CAMERA = ("video", "sendrecv")


def test_the_offers_the_pages_send_are_taken():
    check_offer(offer(CAMERA), sample=False)
    check_offer(offer(CAMERA, ("audio", "sendrecv")), sample=False)  # audio: answered inactive
    check_offer(offer(("video", "recvonly"), ("video", "recvonly")), sample=True)
    check_offer(offer(("video", "sendrecv"), ("video", "recvonly")), sample=True)
    check_offer(with_candidates(offer(CAMERA), MAX_CANDIDATES), sample=False)


@pytest.mark.parametrize(
    "sections, sample, reason",
    [
        ([], False, "no video track"),
        ([("audio", "sendrecv")], False, "no video track"),
        ([CAMERA, CAMERA], False, "takes one video track; the offer has 2"),
        ([CAMERA, CAMERA, CAMERA], False, "the offer has 3"),
        ([("video", "sendonly")], False, "must be sendrecv"),
        ([("video", "recvonly")], False, "must be sendrecv"),
        ([("video", "recvonly")], True, "1 video sections, 1 receiving"),
        ([("video", "sendonly"), ("video", "sendonly")], True, "2 video sections, 0 receiving"),
        ([("video", "recvonly")] * 3, True, "3 video sections"),
    ],
)
def test_offers_that_do_not_fit_the_session_are_refused(sections, sample, reason):
    with pytest.raises(OfferRefused, match=reason):
        check_offer(offer(*sections, channel=not sections), sample)


def test_a_data_channel_beside_the_video_is_refused():
    with pytest.raises(OfferRefused, match="opens a data channel"):
        check_offer(offer(CAMERA, channel=True), sample=False)


def test_an_offer_listing_too_many_candidates_is_refused():
    with pytest.raises(OfferRefused, match=f"{MAX_CANDIDATES + 1} ICE candidates"):
        check_offer(with_candidates(offer(CAMERA), MAX_CANDIDATES + 1), sample=False)


def _video_section(sdp: str) -> str:
    start = sdp.index("m=video")
    end = sdp.find("m=", start + 1)
    return sdp[start : end if end > 0 else len(sdp)]


def _without_fingerprints(sdp: str) -> str:
    return "".join(line for line in sdp.splitlines(True) if "fingerprint" not in line)


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda s: s + _video_section(s), "repeats a=mid:0"),  # the same section twice
        (_without_fingerprints, "no DTLS fingerprint"),
        (lambda s: s.replace("a=sendrecv\r\n", ""), "states no direction"),
        (lambda s: s.replace("a=mid:0\r\n", ""), "has no a=mid"),
        (lambda s: s.replace("a=setup:actpass\r\n", ""), "no DTLS fingerprint"),  # was a 500
        (lambda s: s.replace("UDP/TLS/RTP/SAVPF 97", "UDP/TLS/RTP/SAVPF x"), "malformed SDP"),
    ],
    ids=["repeated-mid", "no-fingerprint", "no-direction", "no-mid", "no-setup",
         "bad-payload-type"],
)
def test_offers_no_peer_could_take_are_malformed(edit, reason):
    """HTTP 400: these reached aiortc before and failed inside it (a 500, or a background
    task's AssertionError after a 200)."""
    with pytest.raises(SdpError, match=reason):
        check_offer(edit(offer(CAMERA)), sample=False)
