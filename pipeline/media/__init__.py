"""Media: decode and probe inputs, plan segments, encode, output formats and HLS, remux.

PyAV only: nothing here loads torch."""
