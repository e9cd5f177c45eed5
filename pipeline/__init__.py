"""Decode -> batch -> infer -> encode: the video pipeline and still-image I/O."""
