"""The spool: what was accepted and not yet screened, kept in the storage (a local folder or an S3
bucket) before anyone hears Success, and staged into a local working folder when a job runs.

Keys: ``spool/<job>/<index>/<name>`` for an HTTP upload, ``spool/inbound/<study digest>/<SOP
digest>.dcm`` for a received instance (one folder per study, whichever replica received it, so a
study whose instances reached several replicas is screened once, with all of them).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .storage import Storage

__all__ = ["Spool", "Upload", "has_dicom", "safe_name", "uid_digest"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file: the client's file name (reduced to a safe base name) and its bytes."""

    name: str
    data: bytes


def safe_name(name: str | None, index: int) -> str:
    """A file name without folders, odd characters or leading dots (never empty)."""
    base = os.path.basename((name or "").replace("\\", "/"))
    base = _UNSAFE.sub("_", base).lstrip("._")[:120]
    return base or f"upload-{index:04d}"


def _is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def has_dicom(upload: Upload) -> bool:
    """Whether the upload is a DICOM Part 10 file, or a zip holding at least one."""
    if _is_dicom(upload.data[:132]):
        return True
    if upload.data[:4] != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(upload.data)) as archive:
            for info in archive.infolist()[:10_000]:
                if info.is_dir() or info.file_size < 132:
                    continue
                with archive.open(info) as member:
                    if _is_dicom(member.read(132)):
                        return True
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError):
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
                self.storage.put(f"{folder}/{index:04d}/{safe_name(upload.name, index)}", upload.data)
        except BaseException:
            self.storage.delete(self.storage.ref(folder))
            raise
        return self.storage.ref(folder)

    def write_instance(self, study_uid: str, sop_uid: str, data: bytes) -> str:
        """Write a received instance durably into its study's folder; returns the folder's ref."""
        folder = f"spool/inbound/{uid_digest(study_uid)}"
        self.storage.put(f"{folder}/{uid_digest(sop_uid)}.dcm", data)
        return self.storage.ref(folder)

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
