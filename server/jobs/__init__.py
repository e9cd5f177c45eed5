"""Batch jobs: parameters, the SQLite store, the runner, comparison frames."""
