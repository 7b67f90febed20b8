"""Files written whole or not at all: the one way this project replaces a file.

A reader (a viewer, a PACS fetching an output, a resumed audit, a second job on the same study)
sees the old file or the new one, never half of one, and a crash mid-write leaves no stray file.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "fsync_folder", "fsync_folders", "move_durably", "write_bytes_atomic"]


def fsync_folder(folder: Path) -> None:
    """Make ``folder``'s entries (a file just renamed into it) survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folders(folder: Path, root: Path) -> None:
    """fsync ``folder`` and each parent up to ``root`` (new folders' entries must last too)."""
    while True:
        fsync_folder(folder)
        if folder == root or root not in folder.parents:
            return
        folder = folder.parent


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


def move_durably(source: Path, target: Path) -> None:
    """Move ``source``, a file its owner no longer needs, to ``target`` durably: renamed where both
    are on one file system (never copied), else copied whole or not at all and then removed; the
    file and ``target``'s folder are fsynced. ``source`` is gone afterwards."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb+") as fh:
        os.fsync(fh.fileno())
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with open(source, "rb") as fh, atomic_path(target, durable=True) as tmp, open(tmp, "wb") as out:
            shutil.copyfileobj(fh, out, 1 << 20)
        source.unlink(missing_ok=True)
    fsync_folder(target.parent)
