"""The inference engine: CARN-M on a device in a precision (PyTorch, OpenVINO, int8), the
worker thread that owns it, auto precision, tiling."""
