"""What a live session's SDP offer must carry, checked before the peer connection takes it.

A camera session receives one video track and sends it back upscaled on the same section; a
sample session sends two (the original and the upscaled) and receives nothing. Audio sections
are answered inactive, so no media the session would not read ever flows (the WebRTC stack
queues every received frame until someone reads it). Anything else is refused with a reason:
:class:`SdpError` (HTTP 400) for an offer no WebRTC peer could take, :class:`OfferRefused`
(422) for a well-formed one that does not fit the session.
"""

from __future__ import annotations

from collections import Counter

from aiortc import RTCPeerConnection
from aiortc.sdp import MediaDescription, SessionDescription

#: ICE candidates an offer may list: a browser lists a few per network interface, and every
#: candidate is a remote address the service's ICE agent sends connectivity checks to.
MAX_CANDIDATES = 32
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    """The offer's SDP cannot be parsed or taken by any WebRTC peer."""


class OfferRefused(ValueError):
    """The offer is well formed but does not bring what the session needs."""


def check_offer(sdp: str, sample: bool) -> None:
    """Raise :class:`SdpError` or :class:`OfferRefused` unless ``sdp`` fits a camera session
    (``sample`` false) or a sample session."""
    try:
        media = SessionDescription.parse(sdp).media
    except Exception as exc:
        raise SdpError(f"malformed SDP offer: {type(exc).__name__}: {exc}") from exc
    _check_sections(media)
    videos = [m for m in media if m.kind == "video"]
    if not videos:
        raise OfferRefused("the offer carries no video track to upscale")
    if any(m.kind == "application" for m in media):
        raise OfferRefused("live sessions carry video only: the offer opens a data channel")
    if sample:
        _check_sample(videos)
    else:
        _check_camera(videos)
    candidates = sum(len(m.ice_candidates) for m in media)
    if candidates > MAX_CANDIDATES:
        raise OfferRefused(
            f"the offer lists {candidates} ICE candidates; at most {MAX_CANDIDATES} are taken"
        )


def _check_sections(media: list[MediaDescription]) -> None:
    mids = Counter(m.rtp.muxId for m in media if m.kind in ("audio", "video"))
    for index, m in enumerate(media, 1):
        where = f"media section {index} ({m.kind})"
        if m.kind in ("audio", "video") and not m.rtp.muxId:
            raise SdpError(f"{where} has no a=mid")
        if mids[m.rtp.muxId] > 1 and m.kind in ("audio", "video"):
            raise SdpError(f"{where} repeats a=mid:{m.rtp.muxId}")
        if m.kind in ("audio", "video") and m.direction not in DIRECTIONS:
            raise SdpError(f"{where} states no direction (a=sendrecv, a=recvonly, ...)")
        if m.dtls is None or not m.dtls.fingerprints:  # no a=setup: no DTLS at all
            raise SdpError(f"{where} has no DTLS fingerprint (a=fingerprint)")


def _check_camera(videos: list[MediaDescription]) -> None:
    if len(videos) != 1:
        raise OfferRefused(f"a camera session takes one video track; the offer has {len(videos)}")
    if videos[0].direction != "sendrecv":
        raise OfferRefused(
            "a camera session's video must be sendrecv: the camera goes out and the upscaled "
            f"video comes back on it (the offer's is {videos[0].direction})"
        )


def _check_sample(videos: list[MediaDescription]) -> None:
    receiving = [m for m in videos if m.direction in ("recvonly", "sendrecv")]
    if len(videos) != 2 or len(receiving) != 2:
        raise OfferRefused(
            "a sample session needs an offer that receives two video tracks (the original and "
            f"the upscaled); it has {len(videos)} video sections, {len(receiving)} receiving"
        )


def answer_only_what_is_used(pc: RTCPeerConnection, sample: bool) -> None:
    """After the offer is taken: audio answered inactive, and a sample session's videos sent
    only, so the peer sends nothing the session would not read."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "video":
            transceiver.direction = "inactive"
        elif sample:
            transceiver.direction = "sendonly"
