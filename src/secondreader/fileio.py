"""Files written whole or not at all: the one way this project replaces a file.

A reader (a viewer, a PACS fetching an output, a resumed audit, a second job on the same study)
sees the old file or the new one, never half of one, and a crash mid-write leaves no stray file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "fsync_folder", "write_bytes_atomic"]


def fsync_folder(folder: Path) -> None:
    """Make ``folder``'s entries (a file just renamed into it) survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends cleanly it replaces
    ``path`` in one rename, and when it raises the temporary file is removed and ``path`` is left
    as it was. The name is unique per writer (``.<name>.<random>.tmp``), so two writers of one file
    each rename a whole file of their own. With ``durable`` the file and its folder are fsynced
    before the block is done: for what is acknowledged to a sender.

    Example::

        with atomic_path(out / "result.json") as tmp:
            tmp.write_text(text)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        tmp.replace(path)
        if durable:
            fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """``path.write_bytes(data)``, whole or not at all (see :func:`atomic_path`)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)
