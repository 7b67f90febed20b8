"""Finding inputs (files, folders, zips) and reading DICOM Part 10 headers safely.

Nothing here puts a path, a patient attribute or a library's exception text into an error message:
messages say what is wrong with the *file* (``source`` is its name only and travels separately).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import FileDataset
from pydicom.errors import BytesLengthException, InvalidDicomError

from ..errors import InvalidInputError, NotDicomError

__all__ = ["DicomFile", "InputFile", "InputProblem", "iter_inputs", "pydicom_warnings_caught", "read_dataset",
           "sniff_non_dicom"]

logger = logging.getLogger(__name__)

#: Largest single input read into memory (bytes); larger files fail without being read.
MAX_FILE_BYTES = 2 * 1024**3
#: Zip safety limits: total uncompressed size and compression ratio of any member.
MAX_ZIP_TOTAL_BYTES = 8 * 1024**3
MAX_ZIP_RATIO = 200
MAX_ZIP_MEMBERS = 100_000
#: The budget of uncompressed bytes of one archive, from its own size: DICOM deflates 1.5-10x, so
#: an archive that would unpack to more than this many times its size (plus a floor for small
#: archives) is refused before any member is read: a 15 MB upload cannot cost gigabytes.
MAX_ZIP_EXPANSION = 32
ZIP_BUDGET_FLOOR_BYTES = 64 * 1024**2


def zip_budget(archive_bytes: int) -> int:
    """Uncompressed bytes an archive of ``archive_bytes`` may unpack to."""
    return min(MAX_ZIP_TOTAL_BYTES, MAX_ZIP_EXPANSION * archive_bytes + ZIP_BUDGET_FLOOR_BYTES)

#: What pydicom raises on malformed or truncated values, when parsing or (lazily) converting them.
HEADER_ERRORS: tuple[type[BaseException], ...] = (
    EOFError, struct.error, ValueError, TypeError, LookupError, OverflowError, NotImplementedError,
    AttributeError, MemoryError, BytesLengthException, InvalidDicomError,
)


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input: its display name and how to get its bytes.

    ``source`` is the file name only (never a folder path); for zip members it is the member's
    base name. ``data`` is read lazily by :meth:`read`.
    """

    source: str
    path: Path
    member: str | None = None
    size: int = 0

    def read(self) -> bytes:
        if self.size > MAX_FILE_BYTES:
            raise InvalidInputError(
                f"file is {self.size / 1024**2:.0f} MiB, over the {MAX_FILE_BYTES // 1024**2} MiB limit"
            )
        if self.member is None:
            return self.path.read_bytes()
        try:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(self.member)
        except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, ValueError):
            # CRC or size mismatch (a member inflating past its declared size stops there), bad
            # deflate stream, unsupported compression or encryption.
            raise InvalidInputError("zip member is corrupt or cannot be unpacked") from None


@dataclass(frozen=True, slots=True)
class InputProblem:
    """An input that could not even be listed (unreadable zip, zip bomb, missing path)."""

    source: str
    reason: str
    #: The file the problem was found in (a zip), when there is one: its bytes are quarantined.
    origin: Path | None = None


def _zip_members(path: Path) -> Iterator[InputFile | InputProblem]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        yield InputProblem(path.name, "zip archive is corrupt or truncated", path)
        return
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        if len(infos) > MAX_ZIP_MEMBERS:
            yield InputProblem(path.name, f"zip archive has over {MAX_ZIP_MEMBERS} members", path)
            return
        readable: list[tuple[str, zipfile.ZipInfo]] = []
        for info in sorted(infos, key=lambda i: i.filename):
            name = os.path.basename(info.filename.replace("\\", "/")) or "unnamed"
            if name.startswith(".") or info.filename.startswith("__MACOSX/"):
                continue
            if info.compress_size and info.file_size / max(info.compress_size, 1) > MAX_ZIP_RATIO:
                yield InputProblem(name, "zip member is compressed suspiciously well (zip bomb?)", path)
                continue
            if info.flag_bits & 0x1:
                yield InputProblem(name, "zip member is encrypted", path)
                continue
            readable.append((name, info))
        # what would be read, against the archive's budget, before any member is read
        total = sum(info.file_size for _, info in readable)
        budget = zip_budget(path.stat().st_size)
        if total > budget:
            yield InputProblem(
                path.name, f"zip archive unpacks to {total / 1024**2:.0f} MiB, over its budget of "
                f"{budget / 1024**2:.0f} MiB ({MAX_ZIP_EXPANSION} times its size, at least "
                f"{ZIP_BUDGET_FLOOR_BYTES // 1024**2} MiB)", path
            )
            return
        for name, info in readable:
            yield InputFile(source=name, path=path, member=info.filename, size=info.file_size)


def iter_inputs(paths: list[Path]) -> Iterator[InputFile | InputProblem]:
    """Expand files, folders (recursively, sorted) and zips into inputs, in a stable order. Hidden
    files and everything under a hidden folder inside a given folder are passed over: ``.git``,
    a virtual environment, and secondreader's own ``.secondreader`` home (its key and quarantined
    copies) when a user screens the folder they ran it in."""
    for root in paths:
        if not root.exists():
            yield InputProblem(root.name, "no such file or folder")
            continue
        if root.is_dir():
            files = sorted(p for p in root.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
        else:
            files = [root]
        for path in files:
            if path.name.startswith("."):
                continue
            if zipfile.is_zipfile(path):
                yield from _zip_members(path)
            else:
                yield InputFile(source=path.name, path=path, size=path.stat().st_size)


_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a zip archive",
    b"GIF8": "a GIF image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"\x1f\x8b": "a gzip archive",
}


def sniff_non_dicom(data: bytes) -> str | None:
    """Name the kind of a well-known non-DICOM file from its first bytes, else ``None``."""
    for magic, kind in _MAGIC.items():
        if data.startswith(magic):
            return kind
    head = data[:1024]
    if head and b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return "a text file"
    return None


@contextlib.contextmanager
def pydicom_warnings_caught() -> Iterator[list[warnings.WarningMessage]]:
    """Catch pydicom's warnings about odd header values: their texts may quote the values
    (a person name, a UID), so they must never reach a log. Yields the caught warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    if caught:
        logger.debug("tolerated %d DICOM header warning(s)", len(caught))


@dataclass(frozen=True, slots=True)
class DicomFile:
    """A parsed Part 10 file. ``truncated``: the file ends inside a value (the header before that
    point was read; the pixel data is incomplete)."""

    dataset: FileDataset
    truncated: bool = False


def read_dataset(data: bytes) -> DicomFile:
    """Parse a DICOM Part 10 file held in memory (pixel data kept encoded, not decoded).

    pydicom's warnings are caught, not shown: the one that matters (the file ends before an
    encapsulated value does) sets ``truncated``.

    Raises
    ------
    NotDicomError
        With a reason a PACS administrator understands: not DICOM (and what it looks like
        instead), no File Meta Information, header truncated or malformed.
    """
    if len(data) == 0:
        raise NotDicomError("file is empty")
    if len(data) < 132 or data[128:132] != b"DICM":
        kind = sniff_non_dicom(data)
        if kind:
            raise NotDicomError(f"not a DICOM file: it is {kind}")
        raise NotDicomError(
            "not a DICOM Part 10 file: no 'DICM' marker after the 128-byte preamble "
            "(File Meta Information missing, or not DICOM at all)"
        )
    try:
        with pydicom_warnings_caught() as caught:
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError:
        raise NotDicomError("DICOM File Meta Information is malformed") from None
    except RecursionError:
        raise NotDicomError("DICOM header nests sequences too deeply to be read") from None
    except HEADER_ERRORS:
        raise NotDicomError("DICOM header is truncated or malformed") from None
    truncated = any("End of file reached" in str(w.message) for w in caught)
    if truncated:
        # pydicom gives up on the whole dataset when the file ends inside encapsulated pixel
        # data; the header before it is intact, so read that alone.
        try:
            with pydicom_warnings_caught():
                ds = pydicom.dcmread(io.BytesIO(data), force=False, stop_before_pixels=True)
        except HEADER_ERRORS + (RecursionError,):
            raise NotDicomError("DICOM file is truncated") from None
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        raise NotDicomError("DICOM File Meta Information has no Transfer Syntax UID")
    if "SOPClassUID" not in ds and "MediaStorageSOPClassUID" not in meta:
        raise NotDicomError("DICOM header has no SOP Class UID: not a DICOM object")
    return DicomFile(ds, truncated=truncated)
