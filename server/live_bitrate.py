"""The bitrate of each live session's encoders: its own floor and ceiling.

aiortc clamps an encoder's target bitrate (its start, and every receiver estimate, REMB) to
limits it reads from module constants: one set for the whole process. A session's floor is
its picture's (bits per pixel x pixels x frame rate), so with those constants one session's
floor became every session's: a small session was sent at a large one's rate. Here the
constants are widened once to the service's own range, and each encoder a session sends with
(its upscaled track's, and a sample session's original picture's) is given bounds of its own,
from its own picture (:func:`bound_encoder`), which its receiver's estimates are clamped to.
aiortc makes an encoder after the first frame is read, at its default rate (and would make it
anew, with a second keyframe, once bounded): the session makes it itself as that frame is read
(:meth:`BitratePolicy.keep`), bounded from the start.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from aiortc.codecs import get_encoder, h264, vpx


@dataclass(frozen=True)
class BitratePolicy:
    """Encoder bitrate for a live output: ``bits_per_pixel`` x pixels x frame rate."""

    bits_per_pixel: float = 0.1
    frame_rate: float = 30.0
    floor: int = 300_000
    ceiling: int = 20_000_000

    def target(self, width: int, height: int) -> int:
        """The rate for a picture of this size: within [floor, ceiling], the ceiling winning
        where it is set below the floor."""
        wanted = int(self.bits_per_pixel * width * height * self.frame_rate)
        return min(self.ceiling, max(self.floor, wanted))

    def widen_aiortc_limits(self) -> None:
        """Let aiortc's encoders (H.264 3 Mbps, VP8 1.5 Mbps at most by default) take any rate
        of this policy's range; each session then bounds its own (process-wide, set once)."""
        for codec in (vpx, h264):
            codec.MIN_BITRATE = min(codec.MIN_BITRATE, self.floor)
            codec.MAX_BITRATE = max(codec.MAX_BITRATE, self.ceiling)

    def keep(self, pc, sender, target: int) -> bool:
        """Hold ``sender``'s encoder (of peer connection ``pc``) to ``target``: bound it, made
        now when aiortc has not made it yet. False when there is none to bound (a codec
        without a target bitrate, or aiortc's internals not as expected)."""
        encoder = getattr(sender, "_RTCRtpSender__encoder", None)
        if encoder is None:
            codecs = next((t._codecs for t in pc.getTransceivers() if t.sender is sender), None)
            if not codecs:
                return False
            encoder = get_encoder(codecs[0])  # the codec aiortc sends with: the first one
            sender._RTCRtpSender__encoder = encoder
        if getattr(encoder, "_bounds", None) == self.limits(target):
            return True
        return self.bound(encoder, target)

    def limits(self, target: int) -> tuple[int, int]:
        """A session's bounds: ``target`` at least (receiver estimates cannot pull the stream
        below what its picture needs), the ceiling at most."""
        return target, max(self.ceiling, target)

    def bound(self, encoder: object, target: int) -> bool:
        """Give ``encoder`` this session's :meth:`limits`; it starts at ``target``. False for
        an encoder without a target bitrate (nothing to bound)."""
        return bound_encoder(encoder, *self.limits(target))


def bound_encoder(encoder: object, floor: int, ceiling: int) -> bool:
    """Clamp ``encoder``'s target bitrate to [``floor``, ``ceiling``] from now on, and set it to
    ``floor``. False when the encoder has no target bitrate."""
    base = type(encoder)
    if not isinstance(getattr(base, "target_bitrate", None), property):
        return False
    if not getattr(base, "_own_bounds", False):
        encoder.__class__ = _bounded(base)
    encoder._bounds = (floor, ceiling)  # type: ignore[attr-defined]
    encoder.target_bitrate = floor  # type: ignore[attr-defined]
    return True


@functools.cache
def _bounded(base: type) -> type:
    """``base`` (an aiortc encoder) whose target bitrate is clamped to the instance's bounds
    before aiortc's own (widened) limits apply."""
    inherited: property = base.target_bitrate  # type: ignore[attr-defined]

    def get(self) -> int:
        return inherited.fget(self)

    def put(self, bitrate: int) -> None:
        floor, ceiling = self._bounds
        inherited.fset(self, max(floor, min(bitrate, ceiling)))

    return type(f"Bounded{base.__name__}", (base,),
                {"_own_bounds": True, "target_bitrate": property(get, put)})  # fmt: skip
