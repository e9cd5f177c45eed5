"""Videos served on request: the manager, its store and the segment cache."""
