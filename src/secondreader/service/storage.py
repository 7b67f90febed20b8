"""Where the service keeps what any replica must read back: the spool (uploads, received
instances) and the artefacts (overlays, DICOM outputs).

Two kinds, chosen by ``SECONDREADER_STORAGE_URL`` (contract 5):

- a local folder (the default, ``$SECONDREADER_HOME``): the embedded single-machine setup. Objects
  are files, written to a temporary name, fsync'd, renamed and their folder fsync'd;
- ``s3://bucket/prefix``: an S3 bucket (MinIO, Ceph RGW, SeaweedFS, the cloud's S3) shared by the
  replicas, through fsspec's ``s3fs``. An object exists once its PUT was answered, which S3 makes
  durable; credentials come from the standard ``AWS_*`` variables.

Objects are named by **keys** (``spool/inbound/<digest>/<digest>.dcm``); the store records their
**refs**: an absolute path for local storage (as before this module existed, so existing rows stay
valid), ``s3://bucket/prefix/key`` for S3. Work that needs files on disk (the pipeline reads paths)
stages a ref's objects into a local working folder (:meth:`Storage.stage`); local storage hands
back the folder itself.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import StorageError
from ..fileio import atomic_path, fsync_folders, move_durably, write_bytes_atomic

__all__ = ["LocalStorage", "S3Storage", "Storage", "open_storage"]

logger = logging.getLogger(__name__)


class Storage(ABC):
    """Objects by key; refs as the store records them."""

    #: whether replicas on other machines see the same objects
    shared: bool = False

    @abstractmethod
    def ref(self, key: str) -> str:
        """The ref of ``key`` (what the store records)."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> str:
        """Write ``data`` durably at ``key``; returns its ref.

        Raises
        ------
        StorageError
            When it could not be written (nothing may then be acknowledged).
        """

    @abstractmethod
    def put_file(self, key: str, path: Path) -> str:
        """Copy the local file ``path`` to ``key`` durably; returns its ref."""

    def move_file(self, key: str, path: Path) -> str:
        """Move the local file ``path`` (the caller's, which it no longer needs) to ``key`` durably;
        returns its ref. ``path`` is gone afterwards."""
        ref = self.put_file(key, path)
        path.unlink(missing_ok=True)
        return ref

    @abstractmethod
    def exists(self, ref: str) -> bool:
        """Whether the object at ``ref`` is there."""

    @abstractmethod
    def read(self, ref: str) -> bytes:
        """The object at ``ref``.

        Raises
        ------
        FileNotFoundError
            When there is no such object.
        StorageError
            When the storage cannot be reached.
        """

    @abstractmethod
    def stage(self, ref: str, workdir: Path) -> Path:
        """A local folder holding the objects under ``ref`` (a folder's ref), with the same
        relative names: for local storage the folder itself, else a copy under ``workdir``."""

    @abstractmethod
    def local_ref(self, staged: Path, path: str, ref: str) -> str:
        """The ref of ``path``, a file of the folder :meth:`stage` gave for ``ref``."""

    @abstractmethod
    def delete(self, ref: str) -> None:
        """Remove the object or folder at ``ref`` (nothing when it is gone already)."""

    def fetch(self, ref: str, target: Path) -> Path:
        """A local file with the object's bytes: ``ref`` itself for local storage, else ``target``."""
        write_bytes_atomic(target, self.read(ref))
        return target

    def check(self) -> None:
        """Write, read and remove a probe object; at start-up, so a wrong URL or credentials fail
        the start instead of the first C-STORE.

        Raises
        ------
        StorageError
            When any of the three fails.
        """
        key = f".probe-{uuid.uuid4().hex}"
        try:
            ref = self.put(key, b"probe")
            if self.read(ref) != b"probe":
                raise StorageError("storage check failed: a probe object read back different bytes")
            self.delete(ref)
        except FileNotFoundError:
            raise StorageError("storage check failed: a probe object just written is not there") from None


class LocalStorage(Storage):
    """A local folder (``root``); refs are absolute paths."""

    shared = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return "LocalStorage()"

    def ref(self, key: str) -> str:
        return str(self.root / _checked_key(key))

    def path(self, key: str) -> Path:
        return self.root / _checked_key(key)

    def put(self, key: str, data: bytes) -> str:
        return self._write(key, lambda fh: fh.write(data))

    def put_file(self, key: str, path: Path) -> str:
        """Copied in 1 MiB chunks, never held whole (an upload may be gigabytes)."""
        target = self.path(key)
        if Path(path).absolute() == target:
            return str(target)
        with open(path, "rb") as source:  # a missing source is FileNotFoundError, not a storage failure
            return self._write(key, lambda fh: shutil.copyfileobj(source, fh, 1 << 20))

    def move_file(self, key: str, path: Path) -> str:
        """Renamed into place (copied in chunks only across file systems), never read whole."""
        target = self.path(key)
        try:
            move_durably(Path(path), target)
            fsync_folders(target.parent, self.root)
        except OSError as exc:
            raise StorageError(f"storage write failed ({type(exc).__name__})") from None
        return str(target)

    def put_stream(self, key: str, source: BinaryIO) -> str:
        """Copy an open binary file, from where it stands, to ``key`` durably in 1 MiB chunks."""
        return self._write(key, lambda fh: shutil.copyfileobj(source, fh, 1 << 20))

    def _write(self, key: str, write: Callable[[BinaryIO], object]) -> str:
        """``write`` into a new file at ``key``, whole or not at all, fsync'd with every folder up to
        the root (new folders' entries must last too)."""
        target = self.path(key)
        try:
            with atomic_path(target, durable=True) as tmp, open(tmp, "wb") as fh:
                write(fh)
            fsync_folders(target.parent, self.root)
        except OSError as exc:
            raise StorageError(f"storage write failed ({type(exc).__name__})") from None
        return str(target)

    def exists(self, ref: str) -> bool:
        return Path(ref).exists()

    def read(self, ref: str) -> bytes:
        try:
            return Path(ref).read_bytes()
        except FileNotFoundError:
            raise
        except IsADirectoryError:
            raise FileNotFoundError("not a file") from None
        except OSError as exc:
            raise StorageError(f"storage read failed ({type(exc).__name__})") from None

    def fetch(self, ref: str, target: Path) -> Path:
        path = Path(ref)
        if not path.is_file():
            raise FileNotFoundError("no such object")
        return path

    def stage(self, ref: str, workdir: Path) -> Path:
        return Path(ref)

    def local_ref(self, staged: Path, path: str, ref: str) -> str:
        return path

    def delete(self, ref: str) -> None:
        path = Path(ref)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class S3Storage(Storage):
    """``s3://bucket/prefix`` through s3fs; refs are ``s3://bucket/prefix/key`` URLs."""

    shared = True

    def __init__(self, url: str, *, endpoint_url: str | None = None, create_bucket: bool = True,
                 max_attempts: int = 5, read_timeout: float = 60.0) -> None:
        if not url.startswith("s3://") or len(url) <= 5:
            raise ValueError("an S3 storage URL is s3://bucket or s3://bucket/prefix")
        try:
            import s3fs
        except ImportError:
            raise StorageError("s3:// storage needs s3fs: pip install 'secondreader[s3]'") from None
        self.url = url.rstrip("/")
        self.bucket = self.url[5:].split("/", 1)[0]
        client_kwargs: dict[str, Any] = {}
        if endpoint_url:
            client_kwargs["endpoint_url"] = endpoint_url
        # No listings cache: another replica adds objects at any time. Credentials and region come
        # from botocore's usual sources (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).
        self.fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, use_listings_cache=False, skip_instance_cache=True,
                                    config_kwargs={"retries": {"max_attempts": max_attempts, "mode": "standard"},
                                                   "connect_timeout": 10, "read_timeout": read_timeout})
        if create_bucket:
            try:
                if not self.fs.exists(self.bucket):
                    self.fs.mkdir(self.bucket)
            except FileExistsError:
                pass
            except Exception as exc:  # noqa: BLE001 - botocore's errors are many; the check below names the failure
                logger.warning("storage bucket not created (%s); it must exist", type(exc).__name__)

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r})"

    def _path(self, ref: str) -> str:
        if not ref.startswith("s3://"):
            raise ValueError("not an s3:// ref")
        return ref[5:]

    def ref(self, key: str) -> str:
        return f"{self.url}/{_checked_key(key)}"

    def put(self, key: str, data: bytes) -> str:
        ref = self.ref(key)
        try:
            self.fs.pipe_file(self._path(ref), data)
        except Exception as exc:  # noqa: BLE001 - any failure means "not durable": the caller refuses
            raise StorageError(f"storage write failed ({type(exc).__name__})") from None
        return ref

    def put_file(self, key: str, path: Path) -> str:
        ref = self.ref(key)
        try:
            self.fs.put_file(str(path), self._path(ref))
        except Exception as exc:  # noqa: BLE001 - as in put
            raise StorageError(f"storage write failed ({type(exc).__name__})") from None
        return ref

    def exists(self, ref: str) -> bool:
        try:
            return bool(self.fs.exists(self._path(ref)))
        except Exception as exc:  # noqa: BLE001 - reachability, not absence
            raise StorageError(f"storage unavailable ({type(exc).__name__})") from None

    def read(self, ref: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(ref)))
        except FileNotFoundError:
            raise FileNotFoundError("no such object") from None
        except Exception as exc:  # noqa: BLE001 - reachability, not absence
            raise StorageError(f"storage read failed ({type(exc).__name__})") from None

    def fetch(self, ref: str, target: Path) -> Path:
        """Downloaded in chunks by s3fs into a temporary beside ``target``, renamed when whole."""
        try:
            with atomic_path(target) as tmp:
                self.fs.get_file(self._path(ref), str(tmp))
        except FileNotFoundError:
            raise FileNotFoundError("no such object") from None
        except Exception as exc:  # noqa: BLE001 - reachability, not absence
            raise StorageError(f"storage read failed ({type(exc).__name__})") from None
        return target

    def _keys(self, ref: str) -> list[str]:
        try:
            return sorted(self.fs.find(self._path(ref)))
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"storage listing failed ({type(exc).__name__})") from None

    def stage(self, ref: str, workdir: Path) -> Path:
        base = self._path(ref).rstrip("/")
        workdir.mkdir(parents=True, exist_ok=True)
        for key in self._keys(ref):
            relative = key[len(base):].lstrip("/")
            if not relative or relative.startswith("..") or "/../" in relative:
                continue
            target = workdir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.fs.get_file(key, str(target))
            except FileNotFoundError:
                continue  # removed meanwhile
            except Exception as exc:  # noqa: BLE001
                raise StorageError(f"storage read failed ({type(exc).__name__})") from None
        return workdir

    def local_ref(self, staged: Path, path: str, ref: str) -> str:
        try:
            relative = Path(path).relative_to(staged)
        except ValueError:
            return path
        return f"{ref.rstrip('/')}/{relative.as_posix()}"

    def delete(self, ref: str) -> None:
        try:
            if self._keys(ref):
                self.fs.rm(self._path(ref), recursive=True)
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - leftovers are harmless; say so
            logger.warning("storage delete failed (%s)", type(exc).__name__)

    def put_many(self, items: Iterable[tuple[str, Path]]) -> list[str]:
        return [self.put_file(key, path) for key, path in items]


def _checked_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError("a storage key is a relative name without empty, . or .. parts")
    return key


def open_storage(url: str | None, *, home: Path, endpoint_url: str | None = None) -> Storage:
    """The storage ``url`` names: ``s3://...``, else a local folder (``home`` when unset)."""
    if url and url.startswith("s3://"):
        return S3Storage(url, endpoint_url=endpoint_url)
    if url and "://" in url and not url.startswith("file://"):
        raise ValueError("SECONDREADER_STORAGE_URL must be a local folder or s3://bucket/prefix")
    if url and url.startswith("file://"):
        url = url[len("file://"):]
    return LocalStorage(Path(url) if url else home)
