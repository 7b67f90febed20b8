"""The quarantine: the original bytes of every input that failed, kept with the reason.

``$SECONDREADER_HOME/quarantine/<sha256>.bin`` holds the bytes exactly as they arrived (a file, a
zip member, a C-STORE'd data set, an HTTP upload); ``<sha256>.json`` next to it says why it failed::

    {"sha256": "...", "size": 1234, "reason": "not a DICOM file: it is a PNG image",
     "channel": "http", "kind": "file", "first_seen": "2026-...Z", "last_seen": "...", "count": 2}

The sidecar holds no patient data: no file name (a sender may put a patient's name in one), no
header value, only the reason, which by contract never carries patient data either. Files are named
by their content hash, so the same bad file sent twice is kept once (``count`` goes up). Nothing is
written when the quarantine is over its budget, in bytes or in entries (a flood of tiny failures
must not fill the file system's inodes): the failure is still answered and logged. A file is kept
by streaming it (hashed, then copied in chunks), never read whole into memory; a scratch file of the
caller's own (an unpacked zip member, a STOW-RS part) is moved in instead (``move``), with no copy
where it lies on the quarantine's file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from .fileio import atomic_path, move_durably

__all__ = ["CHANNELS", "Quarantine"]

logger = logging.getLogger(__name__)

#: Where a quarantined input came from.
CHANNELS = frozenset({"cli", "http", "stow", "dicom", "job"})

#: Default budget for the quarantine folder (bytes of originals kept).
DEFAULT_MAX_BYTES = 10 * 1024**3
#: Default budget for the quarantine folder (originals kept; each has a sidecar too).
DEFAULT_MAX_FILES = 10_000
_CHUNK = 1024 * 1024


class Quarantine:
    """A content-addressed folder of failed inputs with their reasons.

    Parameters
    ----------
    root
        The quarantine folder (created on first use).
    max_bytes
        Stop keeping new originals once the folder holds this many bytes.
    max_files
        ... or this many originals.
    """

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_files: int = DEFAULT_MAX_FILES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        if max_files < 0:
            raise ValueError(f"max_files must be >= 0, not {max_files}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._lock = threading.Lock()
        self._used: int | None = None
        self._files: int | None = None

    def _usage(self) -> int:
        if self._used is None:
            kept = list(self.root.glob("*.bin")) if self.root.is_dir() else []
            self._used = sum(p.stat().st_size for p in kept)
            self._files = len(kept)
        return self._used

    def _count(self) -> int:
        self._usage()
        return self._files or 0

    def keep(self, data: bytes | Path | BinaryIO, *, reason: str, channel: str, kind: str = "file",
             move: bool = False) -> Path | None:
        """Keep ``data`` (bytes, a file to copy, or an open binary file read from its start) with
        ``reason``; returns the kept file, or None when it could not be kept (over budget, disk
        error: logged, never raised). ``move``: ``data`` is a file of the caller's that it no longer
        needs: it is moved in (copied only across file systems), and is gone afterwards either way."""
        if channel not in CHANNELS:
            raise ValueError(f"channel must be one of {sorted(CHANNELS)}, not {channel!r}")
        kept = self._keep(data, reason=reason, channel=channel, kind=kind, move=move)
        if move and isinstance(data, Path):  # kept, a duplicate, or not kept: gone either way
            with contextlib.suppress(OSError):
                data.unlink(missing_ok=True)
        return kept

    def _keep(self, data: bytes | Path | BinaryIO, *, reason: str, channel: str, kind: str,
              move: bool) -> Path | None:
        try:
            if isinstance(data, Path):
                digest, size = _hash_file(data)
            elif isinstance(data, bytes):
                digest, size = hashlib.sha256(data).hexdigest(), len(data)
            else:
                data.seek(0)
                digest, size = _hash_stream(data)
        except OSError as exc:
            logger.warning("quarantine: the failed input cannot be read (%s)", type(exc).__name__)
            return None
        target = self.root / f"{digest}.bin"
        sidecar = self.root / f"{digest}.json"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self._lock:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    if self._usage() + size > self.max_bytes or self._count() >= self.max_files:
                        logger.warning("quarantine is full (%d MiB or %d entries): a failed input was not kept",
                                       self.max_bytes // 1024**2, self.max_files)
                        return None
                    _write_durably(target, data, move=move)
                    self._used = self._usage() + size
                    self._files = self._count() + 1
                    meta = {"sha256": digest, "size": size, "reason": reason, "channel": channel,
                            "kind": kind, "first_seen": now, "last_seen": now, "count": 1}
                else:
                    meta = _read_meta(sidecar) or {"sha256": digest, "size": size, "reason": reason,
                                                   "channel": channel, "kind": kind, "first_seen": now, "count": 0}
                    count = meta.get("count", 0)
                    meta["count"] = (count if isinstance(count, int) else 0) + 1
                    meta["last_seen"] = now
                    meta["reason"] = reason
                _write_durably(sidecar, (json.dumps(meta, sort_keys=True) + "\n").encode())
            except OSError as exc:
                logger.error("quarantine: could not keep a failed input (%s)", type(exc).__name__)
                return None
        logger.info("quarantined input %s (%s)", digest[:12], channel)
        return target

    def entries(self) -> list[dict[str, object]]:
        """Every sidecar, oldest first."""
        found = [m for p in sorted(self.root.glob("*.json")) if (m := _read_meta(p)) is not None]
        return sorted(found, key=lambda m: str(m.get("first_seen", "")))


def _read_meta(path: Path) -> dict[str, object] | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _hash_file(path: Path) -> tuple[str, int]:
    with open(path, "rb") as fh:
        return _hash_stream(fh)


def _hash_stream(fh: BinaryIO) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


@contextlib.contextmanager
def _source(data: Path | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(data, Path):
        with open(data, "rb") as fh:
            yield fh
    else:
        data.seek(0)
        yield data


def _write_durably(path: Path, data: bytes | Path | BinaryIO, *, move: bool = False) -> None:
    if move and isinstance(data, Path):
        move_durably(data, path)
        return
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as fh:
        if isinstance(data, bytes):
            fh.write(data)
        else:
            with _source(data) as source:
                shutil.copyfileobj(source, fh, _CHUNK)
