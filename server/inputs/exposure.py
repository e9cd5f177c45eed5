"""What the API shows of a job: source URLs without secrets, errors without server paths."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path


def public_url(url: str) -> str:
    """``url`` as anyone may see it: no credentials, query string or fragment; a local file
    by its name only."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "(malformed URL)"
    if parts.scheme not in ("http", "https"):
        return Path(parts.path).name or "(local file)"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def redact_paths(message: str, job_folder: Path, url: str) -> str:
    """A job's error message with the server's paths replaced by what the user knows: the
    downloaded input by its URL, anything else in the job folder by its name."""
    shown = public_url(url)
    for folder in {job_folder, job_folder.resolve()}:
        message = message.replace(str(folder / "input"), shown)
        message = message.replace(str(folder) + "/", "")
        message = message.replace(str(folder), "the job folder")
    return message


#: An absolute path in a message: from a "/" at the start or after a space, quote or "(", up
#: to the next space, quote, comma or ")".
_ABSOLUTE_PATH = re.compile(r"(?<![^\s'\"(=])/[^\s'\"),]+")


def without_paths(message: str) -> str:
    """``message`` with every absolute path cut to its last part (``w.pth``): for what anyone
    may read (``/readyz`` needs no token)."""
    return _ABSOLUTE_PATH.sub(lambda found: Path(found[0]).name or "/", message)

