"""A discrete-event model of one video's segments on a Ray cluster of N GPUs.

Every segment goes through: the head's remux (a few head cores), the head's network link
(the segment's input packets out), a GPU worker (decode -> upscale on the GPU -> encode on the
CPU cores beside it, overlapped within a segment, so a segment takes as long as its slowest
stage plus a fixed Ray overhead), and the link again (the encoded segment back). A worker takes
at most ``--per-actor`` segments at once, its GPU and its encoder cores are shared by them, and
segments are handed out in order, as the service does.

Calibration (see docs/SCALING.md for which is which):
- measured here (bench/scale.py, bench/pipeline.py on the shared Xeon): the head's remux
  seconds per input megabyte, the fixed per-segment overhead of Ray, the x264 encode seconds
  per output megapixel per core;
- modelled: GPU seconds per frame (CARN-M x2 Mult-Adds over an assumed sustained fp16
  throughput), input and output bitrates of a 1080p -> 2160p video, link bandwidth, cores.

    python bench/simulate_scale.py --gpus 8 100
"""

from __future__ import annotations

import argparse
import heapq
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Model:
    fps: float = 25.0
    video_seconds: float = 600.0
    segment_seconds: float = 4.0
    in_mbit_s: float = 8.0  #: 1080p H.264 input bitrate (modelled)
    out_mbit_s: float = 40.0  #: 2160p H.264 output at CRF 18 (modelled)
    remux_s_per_mb: float = 0.048  #: head remux seconds per input MB (measured)
    remux_cores: int = 4  #: head cores remuxing at once (modelled)
    link_gbit_s: float = 10.0  #: the head's network link, each direction (modelled)
    gpu_s_per_frame: float = 0.025  #: CARN-M x2, 1080p in, on one GPU, fp16 (modelled)
    decode_s_per_frame: float = 0.002  #: 1080p H.264 decode (NVDEC or one core) (modelled)
    encode_core_s_per_mpix: float = 0.0247  #: x264 core-seconds per output megapixel (measured)
    encode_cores: int = 8  #: CPU cores beside each GPU for encoding (modelled)
    overhead_s: float = 0.05  #: Ray's fixed cost per segment (measured)
    out_mpix: float = 3840 * 2160 / 1e6

    @property
    def segments(self) -> int:
        return round(self.video_seconds / self.segment_seconds)

    @property
    def frames_per_segment(self) -> float:
        return self.fps * self.segment_seconds

    @property
    def in_mb(self) -> float:
        return self.in_mbit_s * self.segment_seconds / 8

    @property
    def out_mb(self) -> float:
        return self.out_mbit_s * self.segment_seconds / 8

    def stage_seconds(self) -> dict[str, float]:
        """One segment's seconds in each stage when it has a worker to itself."""
        n = self.frames_per_segment
        return {
            "remux": self.remux_s_per_mb * self.in_mb,
            "send": self.in_mb * 8 / (self.link_gbit_s * 1000),
            "gpu": self.gpu_s_per_frame * n,
            "encode": self.encode_core_s_per_mpix * self.out_mpix * n / self.encode_cores,
            "decode": self.decode_s_per_frame * n,
            "return": self.out_mb * 8 / (self.link_gbit_s * 1000),
        }


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    segment: int = field(compare=False)
    worker: int = field(compare=False, default=-1)


@dataclass
class Result:
    gpus: int
    seconds: float
    busy: dict[str, float]  #: each resource's busy fraction over the run

    def bottleneck(self, stages: dict[str, float]) -> str:
        """The busiest resource; inside a worker, its slowest stage. When nothing is near
        full, the video has too few segments to keep every GPU busy to the end (the tail)."""
        name = max(self.busy, key=self.busy.get)
        if self.busy[name] < 0.8:
            return "too few segments (tail)"
        if name == "GPU workers":
            inner = max(("gpu", "encode", "decode"), key=stages.get)
            return {"gpu": "GPU", "encode": "CPU encode beside the GPU", "decode": "decode"}[inner]
        return name


def simulate(model: Model, gpus: int, per_actor: int = 2) -> Result:
    """Run the event model; returns the makespan and each resource's utilisation."""
    stages = model.stage_seconds()
    worker_seconds = max(stages["gpu"], stages["encode"], stages["decode"]) + model.overhead_s
    events: list[_Event] = []
    seq = 0

    def push(time: float, kind: str, segment: int, worker: int = -1) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, _Event(time, seq, kind, segment, worker))

    # Servers: remux cores, one link out, one link in, workers (processor-shared by segments).
    remux_free = [0.0] * model.remux_cores
    link_out_free = link_in_free = 0.0
    busy = {"head remux": 0.0, "head link out": 0.0, "head link in": 0.0, "GPU workers": 0.0}
    load = [0] * gpus  #: segments at each worker
    next_segment = 0
    now = 0.0
    done = 0

    def dispatch(time: float) -> None:
        nonlocal next_segment, link_out_free
        while next_segment < model.segments:
            worker = min(range(gpus), key=lambda w: load[w])
            if load[worker] >= per_actor:
                return
            load[worker] += 1
            core = min(range(model.remux_cores), key=lambda c: remux_free[c])
            start = max(time, remux_free[core])
            remux_free[core] = start + stages["remux"]
            busy["head remux"] += stages["remux"]
            sent = max(remux_free[core], link_out_free) + stages["send"]
            link_out_free = sent
            busy["head link out"] += stages["send"]
            # Segments sharing a worker share its GPU and encoder: each takes longer.
            push(sent + worker_seconds * load[worker], "computed", next_segment, worker)
            busy["GPU workers"] += worker_seconds
            next_segment += 1

    dispatch(0.0)
    while events:
        event = heapq.heappop(events)
        now = event.time
        if event.kind == "computed":
            back = max(now, link_in_free) + stages["return"]
            link_in_free = back
            busy["head link in"] += stages["return"]
            push(back, "returned", event.segment, event.worker)
        else:
            load[event.worker] -= 1
            done += 1
            dispatch(now)
    utilisation = {
        "head remux": busy["head remux"] / (model.remux_cores * now),
        "head link out": busy["head link out"] / now,
        "head link in": busy["head link in"] / now,
        "GPU workers": busy["GPU workers"] / (gpus * now),
    }
    return Result(gpus, now, utilisation)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 100])
    parser.add_argument("--segment-seconds", type=float, default=4.0)
    parser.add_argument("--remux-s-per-mb", type=float, default=Model.remux_s_per_mb)
    parser.add_argument("--overhead-s", type=float, default=Model.overhead_s)
    parser.add_argument("--encode-core-s-per-mpix", type=float,
                        default=Model.encode_core_s_per_mpix)  # fmt: skip
    parser.add_argument("--gpu-s-per-frame", type=float, default=Model.gpu_s_per_frame)
    parser.add_argument("--link-gbit-s", type=float, default=Model.link_gbit_s)
    args = parser.parse_args()
    model = Model(
        segment_seconds=args.segment_seconds,
        remux_s_per_mb=args.remux_s_per_mb,
        overhead_s=args.overhead_s,
        encode_core_s_per_mpix=args.encode_core_s_per_mpix,
        gpu_s_per_frame=args.gpu_s_per_frame,
        link_gbit_s=args.link_gbit_s,
    )
    stages = model.stage_seconds()
    print(f"{model.segments} segments of {model.segment_seconds:g} s, "
          f"{model.in_mb:.1f} MB in / {model.out_mb:.1f} MB out each; per segment: "
          + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()))  # fmt: skip
    frames = model.fps * model.video_seconds
    print(
        "| GPUs | finish 10-min video | throughput fps | x real time | head out Gbit/s "
        "| head in Gbit/s | busiest | remux / link out / link in / GPUs busy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for gpus in args.gpus:
        r = simulate(model, gpus)
        out_gbit = model.segments * model.in_mb * 8 / 1000 / r.seconds
        in_gbit = model.segments * model.out_mb * 8 / 1000 / r.seconds
        shares = " / ".join(f"{v:.0%}" for v in r.busy.values())
        print(f"| {gpus} | {r.seconds:.0f} s | {frames / r.seconds:.0f} "
              f"| {model.video_seconds / r.seconds:.1f} | {out_gbit:.2f} | {in_gbit:.2f} "
              f"| {r.bottleneck(stages)} | {shares} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
