"""Where segments run: executors (in-process, worker process, Ray), slots, segmented runs and
their work folders."""
