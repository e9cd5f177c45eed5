"""Files that appear whole: written under a name of their own beside the target
(``.NAME.*.part``), then renamed, so that a reader never sees half of one and writers at once
never collide. They get the usual permissions (the umask's), readable by a web server."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def publish_bytes(path: Path, data: bytes, replace: bool = True) -> Path:
    """Write ``data`` at ``path`` (``replace=False``: a file already there, written by
    another writer at the same moment, is kept)."""
    part = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    try:
        with open(part, "xb") as out:
            out.write(data)
        if replace:
            os.replace(part, path)
        else:
            try:
                os.link(part, path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                if not path.exists():
                    os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path


def publish_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) at ``path``, as :func:`publish_bytes` does."""
    return publish_bytes(path, text.encode("utf-8"))
