"""The upscaling factors CARN and CARN-M are built for (the one owner of that fact; no torch)."""

SUPPORTED_SCALES: tuple[int, ...] = (2, 3, 4)
