"""The inference precision modes: the one list that the engine, the settings, the CLI and the
API read. Torch-free, so ``--help`` and settings validation stay light."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    name: str
    devices: tuple[str, ...]  #: device types it runs on
    backend: str  #: "torch", "openvino" (float) or "int8"
    summary: str


PRECISIONS: tuple[Precision, ...] = (
    Precision(
        "auto",
        ("cpu", "cuda"),
        "",
        "fp16 on CUDA; on a CPU the fastest mode within 0.05 dB of fp32, measured on first use",
    ),
    Precision("fp32", ("cpu", "cuda"), "torch", "PyTorch float32"),
    Precision("bf16", ("cpu", "cuda"), "torch", "PyTorch, body in bfloat16, image edges fp32"),
    Precision("fp16", ("cuda",), "torch", "PyTorch, body in float16, image edges fp32"),
    Precision("ov-fp32", ("cpu",), "openvino", "OpenVINO float32"),
    Precision("ov-bf16", ("cpu",), "openvino", "OpenVINO bfloat16 (CPUs with AVX-512 BF16/AMX)"),
    Precision("ov-fp16", ("cpu",), "openvino", "OpenVINO float16 (CPUs with FP16 arithmetic)"),
    Precision("int8", ("cpu",), "int8", "OpenVINO int8 (NNCF), a few layers in fp32"),
)
NAMES: tuple[str, ...] = tuple(p.name for p in PRECISIONS)
#: The modes ``auto`` may pick on a CPU, the likely fastest first (measuring stops early on
#: the slower ones).
CPU_AUTO_CANDIDATES: tuple[str, ...] = ("int8", "ov-bf16", "bf16", "ov-fp32", "fp32", "ov-fp16")


def precision(name: str) -> Precision:
    """The mode called ``name``; a ValueError names the allowed ones."""
    for entry in PRECISIONS:
        if entry.name == name:
            return entry
    raise ValueError(f"unknown precision {name!r}: choose one of {', '.join(NAMES)}")


def describe() -> str:
    """One line for help texts: every mode with the devices it is limited to."""
    parts = []
    for p in PRECISIONS:
        only = "" if len(p.devices) > 1 else f" ({p.devices[0].upper()})"
        parts.append(p.name + only)
    return ", ".join(parts)


#: Training precisions (``TrainConfig.amp``, ``CARN_STREAM_TRAIN_AMP``): ``off`` is fp32.
TRAIN_AMPS = ("auto", "off", "bf16", "fp16")
