"""The spool: what was accepted and not yet screened, kept in the storage (a local folder or an S3
bucket) before anyone hears Success, and staged into a local working folder when a job runs.

Keys: ``spool/<job>/<index>/<name>`` for an HTTP upload, ``spool/inbound/<study digest>/<SOP
digest>.dcm`` for a received instance (one folder per study, whichever replica received it, so a
study whose instances reached several replicas is screened once, with all of them).

Large inputs never pass through memory: a request body is streamed into a file in an ``incoming``
folder of the local working folder (:meth:`Spool.incoming`), and that file is moved into a local
spool (renamed: written once) or put into a bucket from the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import StorageError
from .storage import LocalStorage, Storage

__all__ = ["Spool", "Upload", "has_dicom", "safe_name", "uid_digest"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file: the client's file name (reduced to a safe base name) and its bytes, held
    (``data``), or in a file of the caller's that the spool takes (``path``: moved in), or in an open
    binary file (``file``: copied from its start)."""

    name: str
    data: bytes = b""
    path: Path | None = None
    file: BinaryIO | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """The bytes as a binary file, at its start."""
        if self.path is not None:
            with open(self.path, "rb") as fh:
                yield fh
        elif self.file is not None:
            self.file.seek(0)
            yield self.file
        else:
            yield io.BytesIO(self.data)

    def head(self, size: int) -> bytes:
        with self.open() as fh:
            return fh.read(size)

    @property
    def content(self) -> bytes | Path | BinaryIO:
        """What :meth:`Quarantine.keep` takes."""
        return self.path if self.path is not None else self.file if self.file is not None else self.data


def safe_name(name: str | None, index: int) -> str:
    """A file name without folders, odd characters or leading dots (never empty)."""
    base = os.path.basename((name or "").replace("\\", "/"))
    base = _UNSAFE.sub("_", base).lstrip("._")[:120]
    return base or f"upload-{index:04d}"


def _is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def has_dicom(upload: Upload) -> bool:
    """Whether the upload is a DICOM Part 10 file, or a zip holding at least one (read from where
    it lies: the head of each member only)."""
    head = upload.head(132)
    if _is_dicom(head):
        return True
    if head[:4] != b"PK\x03\x04":
        return False
    try:
        with upload.open() as fh, zipfile.ZipFile(fh) as archive:
            for info in archive.infolist()[:10_000]:
                if info.is_dir() or info.file_size < 132:
                    continue
                with archive.open(info) as member:
                    if _is_dicom(member.read(132)):
                        return True
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError, ValueError):
        return False
    return False


def uid_digest(uid: str) -> str:
    """A fixed-length file name for a UID (UIDs are identifiers: they are not written as names)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


class Spool:
    """Uploads and received instances in ``storage``; ``workdir`` is this process's local
    folder for staging jobs (S3 storage only: a local spool is read where it lies)."""

    def __init__(self, storage: Storage, workdir: Path) -> None:
        self.storage = storage
        self.workdir = workdir

    def write_upload(self, uploads: Sequence[Upload]) -> str:
        """Write every upload durably; returns the ref of their folder (the job's spool).

        Raises
        ------
        StorageError
            When any could not be written (those written are removed again).
        """
        folder = f"spool/{uuid.uuid4().hex}"
        try:
            for index, upload in enumerate(uploads):
                key = f"{folder}/{index:04d}/{safe_name(upload.name, index)}"
                if upload.path is not None:
                    self.put_file(key, upload.path)
                elif upload.file is not None:
                    self._put_stream(key, upload.file)
                else:
                    self.storage.put(key, upload.data)
        except BaseException:
            self.storage.delete(self.storage.ref(folder))
            raise
        return self.storage.ref(folder)

    def write_instance(self, study_uid: str, sop_uid: str, data: bytes | Path) -> str:
        """Write a received instance (its bytes, or a file of the caller's, moved in) durably into
        its study's folder; returns the folder's ref."""
        folder = f"spool/inbound/{uid_digest(study_uid)}"
        key = f"{folder}/{uid_digest(sop_uid)}.dcm"
        if isinstance(data, Path):
            self.put_file(key, data)
        else:
            self.storage.put(key, data)
        return self.storage.ref(folder)

    def incoming(self) -> Path:
        """A new local folder for the files of one request as they arrive (remove it with
        :meth:`discard` once the request is answered: what the spool took is no longer there)."""
        folder = self.workdir / "incoming" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    @staticmethod
    def discard(folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def put_file(self, key: str, path: Path) -> str:
        """Move the local file ``path`` (the caller's, which it no longer needs) to ``key`` durably
        (:meth:`Storage.move_file`: renamed into a local storage, put into a bucket from the file,
        never read whole). Returns its ref.

        Raises
        ------
        StorageError
            When it could not be written (nothing may then be acknowledged).
        """
        return self.storage.move_file(key, path)

    def _put_stream(self, key: str, source: BinaryIO) -> str:
        """Copy an open binary file (from its start) to ``key`` durably, in chunks; returns its ref."""
        source.seek(0)
        if isinstance(self.storage, LocalStorage):
            return self.storage.put_stream(key, source)
        folder = self.incoming()
        try:
            local = folder / "upload"
            with open(local, "wb") as out:
                shutil.copyfileobj(source, out, _CHUNK)
            return self.storage.put_file(key, local)
        except OSError as exc:
            raise StorageError(f"storage write failed ({type(exc).__name__})") from None
        finally:
            self.discard(folder)

    def stage(self, job_id: str, ref: str) -> Path:
        """A local folder with the job's files (see :meth:`Storage.stage`)."""
        return self.storage.stage(ref, self.workdir / job_id)

    def local_ref(self, job_id: str, ref: str, path: str) -> str:
        """The storage ref of ``path``, a file in the job's staged folder."""
        return self.storage.local_ref(self.workdir / job_id, path, ref)

    def unstage(self, job_id: str) -> None:
        """Remove the job's local copy (never the spool itself)."""
        if self.storage.shared:
            shutil.rmtree(self.workdir / job_id, ignore_errors=True)

    def remove(self, ref: str) -> None:
        self.storage.delete(ref)
