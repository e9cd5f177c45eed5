"""The service's SQLite file, opened one way for every store that keeps state in it.

One connection per file, shared by the job store and the video store: write-ahead logging
(readers never wait for a writer, and a crash loses nothing committed), normal syncing (WAL
keeps that safe), a busy timeout, rows by column name. A lock serialises its use across
threads; :meth:`Database.transaction` is an immediate transaction (writers queue up front).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Database:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.connection.row_factory = sqlite3.Row
        self.lock = threading.RLock()
        self._users = 0  #: stores that use it; the last to close closes the connection
        with self.lock:
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=NORMAL")
            self.connection.execute("PRAGMA busy_timeout=5000")

    @classmethod
    def of(cls, where: Path | Database) -> Database:
        """``where`` itself, or the file at ``where`` opened."""
        return where if isinstance(where, Database) else cls(where)

    def use(self, schema: str, added_columns: dict[str, dict[str, str]] | None = None) -> None:
        """Create a store's tables (and columns added since a file was first made)."""
        with self.lock:
            self._users += 1
            self.connection.executescript(schema)
            for table, columns in (added_columns or {}).items():
                rows = self.connection.execute(f"PRAGMA table_info({table})")
                have = {row["name"] for row in rows}
                for column, kind in columns.items():
                    if column not in have:
                        self.connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def release(self) -> None:
        """A store is done with it; the last one closes the file."""
        with self.lock:
            self._users -= 1
            if self._users <= 0:
                self.connection.close()
