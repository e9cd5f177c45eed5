"""carn-stream: real-time video super-resolution with CARN-M."""

__version__ = "0.1.0"
