"""Finding inputs (files, folders, zips) and reading DICOM Part 10 headers safely.

Nothing here puts a path, a patient attribute or a library's exception text into an error message:
messages say what is wrong with the *file* (``source`` is its name only and travels separately).

A zip member is never held whole in memory: :meth:`InputFile.stage` unpacks it in fixed-size chunks
into one scratch file, counting the bytes that really come out against the budget of the upload it
came in (the sizes its headers declare are only used to refuse it early), and pydicom reads that file.
A plain file is read where it lies.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset
from pydicom.errors import BytesLengthException, InvalidDicomError

from ..errors import InvalidInputError, NotDicomError

if TYPE_CHECKING:
    from ..quarantine import Quarantine

__all__ = ["DicomFile", "InputFile", "InputProblem", "StagedInput", "ZipBudget", "drop_deferred", "iter_inputs",
           "pydicom_warnings_caught", "quarantine_input", "read_dataset", "remove_stale_scratch", "sniff_non_dicom"]

logger = logging.getLogger(__name__)

#: Largest single input read (bytes); larger files fail without being read.
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
#: Zip members are unpacked in chunks of this many bytes.
UNPACK_CHUNK_BYTES = 1024 * 1024
#: Values longer than this are not read with the header: pydicom reads them from the file when
#: they are used (the pixel data, when the pixels are decoded).
DEFER_BYTES = 64 * 1024


def zip_budget(archive_bytes: int) -> int:
    """Uncompressed bytes an archive of ``archive_bytes`` may unpack to."""
    return min(MAX_ZIP_TOTAL_BYTES, MAX_ZIP_EXPANSION * archive_bytes + ZIP_BUDGET_FLOOR_BYTES)

#: What pydicom raises on malformed or truncated values, when parsing or (lazily) converting them.
HEADER_ERRORS: tuple[type[BaseException], ...] = (
    EOFError, struct.error, ValueError, TypeError, LookupError, OverflowError, NotImplementedError,
    AttributeError, MemoryError, BytesLengthException, InvalidDicomError,
)

#: What unpacking a corrupt member raises: a CRC or size mismatch (a member inflating past its
#: declared size stops there), a bad deflate stream, an unsupported compression or encryption.
_UNPACK_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, ValueError,
)


class ZipBudget:
    """The uncompressed bytes the zips of one upload (all the archives one input root holds) may
    unpack to, counted as they really come out of the decompressor."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, count: int) -> None:
        """Count ``count`` more unpacked bytes; past the limit, the member being unpacked is refused."""
        self.used += count
        if self.used > self.limit:
            raise InvalidInputError(f"zip archive unpacks past its budget of {self.limit / 1024**2:.0f} MiB")


#: A scratch file older than this is no study's any more: its process was killed before removing it.
STALE_SCRATCH_SECONDS = 3600.0


def remove_stale_scratch(scratch: Path, *, older_than: float = STALE_SCRATCH_SECONDS) -> int:
    """Remove the unpacked zip members (``member-*.dcm``) that a process killed outright left in
    ``scratch``, at start-up: those last written more than ``older_than`` seconds ago (a younger one
    may be a live study's, of another process sharing the folder). Returns how many were removed."""
    removed = 0
    cutoff = time.time() - older_than
    for path in scratch.glob("member-*.dcm") if scratch.is_dir() else ():
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove: left as it is
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


@dataclass(frozen=True, slots=True)
class StagedInput:
    """A file pydicom can read: the input itself, or (``temporary``) the scratch copy of a zip
    member, which its owner removes (:meth:`remove`)."""

    path: Path
    temporary: bool = False

    def remove(self) -> None:
        if self.temporary:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input: its display name and where its bytes are.

    ``source`` is the file name only (never a folder path); for zip members it is the member's
    base name. ``budget`` is the running budget of the upload a zip member belongs to (a fresh one
    from the archive's size when none). Bytes are never read whole: :meth:`stage` gives a file.
    """

    source: str
    path: Path
    member: str | None = None
    size: int = 0
    budget: ZipBudget | None = field(default=None, compare=False, repr=False)

    def stage(self, scratch: Path | None = None) -> StagedInput:
        """A file holding this input's bytes: the file itself, or a zip member unpacked in chunks into
        a new file in ``scratch`` (the system's temporary folder when None), which the caller removes.

        Raises
        ------
        InvalidInputError
            The input is over the size limit, the member is corrupt, or unpacking it went past the
            upload's budget (the partial file is removed then).
        OSError
            The archive or the scratch folder cannot be read or written.
        """
        if self.size > MAX_FILE_BYTES:
            raise InvalidInputError(
                f"file is {self.size / 1024**2:.0f} MiB, over the {MAX_FILE_BYTES // 1024**2} MiB limit"
            )
        if self.member is None:
            return StagedInput(self.path)
        budget = self.budget if self.budget is not None else ZipBudget(zip_budget(self.path.stat().st_size))
        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="member-", suffix=".dcm", dir=scratch)
        target = Path(name)
        try:
            with open(fd, "wb") as out:
                _unpack(self.path, self.member, out, budget)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return StagedInput(target, temporary=True)


def _unpack(archive_path: Path, member: str, out: io.BufferedWriter, budget: ZipBudget) -> None:
    """Copy ``member`` of the archive into ``out`` in fixed-size chunks, counting every byte that
    comes out against ``budget`` and the single-file limit (never the sizes the headers declare)."""
    written = 0
    try:
        with zipfile.ZipFile(archive_path) as archive, archive.open(member) as source:
            while chunk := source.read(UNPACK_CHUNK_BYTES):
                written += len(chunk)
                if written > MAX_FILE_BYTES:
                    raise InvalidInputError(f"zip member unpacks past the {MAX_FILE_BYTES // 1024**2} MiB file limit")
                budget.take(len(chunk))
                out.write(chunk)
    except _UNPACK_ERRORS:
        raise InvalidInputError("zip member is corrupt or cannot be unpacked") from None


@dataclass(frozen=True, slots=True)
class InputProblem:
    """An input that could not even be listed (unreadable zip, zip bomb, missing path)."""

    source: str
    reason: str
    #: The file the problem was found in (a zip), when there is one: its bytes are quarantined.
    origin: Path | None = None


def _zip_members(path: Path, budget: ZipBudget | None = None) -> Iterator[InputFile | InputProblem]:
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
        # what the headers say would be read, against the archive's budget, before any member is
        # read (the bytes that really come out are counted against the upload's budget as they come)
        total = sum(info.file_size for _, info in readable)
        size = path.stat().st_size
        limit = zip_budget(size)
        if total > limit:
            yield InputProblem(
                path.name, f"zip archive unpacks to {total / 1024**2:.0f} MiB, over its budget of "
                f"{limit / 1024**2:.0f} MiB ({MAX_ZIP_EXPANSION} times its size, at least "
                f"{ZIP_BUDGET_FLOOR_BYTES // 1024**2} MiB)", path
            )
            return
        if budget is None:
            budget = ZipBudget(limit)
        for name, info in readable:
            yield InputFile(source=name, path=path, member=info.filename, size=info.file_size, budget=budget)


def iter_inputs(paths: list[Path]) -> Iterator[InputFile | InputProblem]:
    """Expand files, folders (recursively, sorted) and zips into inputs, in a stable order. Hidden
    files and everything under a hidden folder inside a given folder are passed over: ``.git``,
    a virtual environment, and secondreader's own ``.secondreader`` home (its key and quarantined
    copies) when a user screens the folder they ran it in.

    Each path given is one upload: the zips it holds share one budget of unpacked bytes, the
    :func:`zip_budget` of their sizes together (each zip is also held to its own budget, checked on
    its headers before any member is read)."""
    for root in paths:
        if not root.exists():
            yield InputProblem(root.name, "no such file or folder")
            continue
        if root.is_dir():
            files = sorted(p for p in root.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
        else:
            files = [root]
        files = [p for p in files if not p.name.startswith(".")]
        zips = {p for p in files if zipfile.is_zipfile(p)}
        budget = ZipBudget(zip_budget(sum(p.stat().st_size for p in zips))) if zips else None
        for path in files:
            if path in zips:
                yield from _zip_members(path, budget)
            else:
                yield InputFile(source=path.name, path=path, size=path.stat().st_size)


def quarantine_input(quarantine: Quarantine, item: InputFile | InputProblem, *, reason: str, channel: str,
                     staged: StagedInput | None = None) -> None:
    """Keep the original bytes of a failed input (a file, a zip member, or the zip it was in),
    streamed: a zip member's scratch copy (``staged``) is moved into the quarantine, a file copied
    in chunks, never read whole."""
    if isinstance(item, InputProblem):
        if item.origin is not None and item.origin.is_file():
            quarantine.keep(item.origin, reason=reason, channel=channel, kind="zip")
        return
    if item.member is None:
        if item.size <= MAX_FILE_BYTES:  # one over the limit was never read: it is not copied either
            quarantine.keep(item.path, reason=reason, channel=channel, kind="file")
    elif staged is not None and staged.temporary and staged.path.is_file():
        quarantine.keep(staged.path, reason=reason, channel=channel, kind="zip member", move=True)
    elif item.path.is_file():  # a member that could not be unpacked: keep its zip
        quarantine.keep(item.path, reason=reason, channel=channel, kind="zip")


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


def read_dataset(source: bytes | Path) -> DicomFile:
    """Parse a DICOM Part 10 file, held in memory or (a path) read from disk, pixel data kept encoded.

    From a path, values longer than :data:`DEFER_BYTES` (the pixel data) are not read with the
    header: pydicom reads each from the file when it is first used, so the file must stay there
    until then. pydicom's warnings are caught, not shown: the one that matters (the file ends
    before an encapsulated value does) sets ``truncated``.

    Raises
    ------
    NotDicomError
        With a reason a PACS administrator understands: not DICOM (and what it looks like
        instead), no File Meta Information, header truncated or malformed.
    OSError
        The file cannot be read.
    """
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            head = fh.read(1024)
        target: bytes | str = str(source.absolute())
        defer: int | None = DEFER_BYTES
    else:
        head, target, defer = source[:1024], source, None
    if len(head) == 0:
        raise NotDicomError("file is empty")
    if len(head) < 132 or head[128:132] != b"DICM":
        kind = sniff_non_dicom(head)
        if kind:
            raise NotDicomError(f"not a DICOM file: it is {kind}")
        raise NotDicomError(
            "not a DICOM Part 10 file: no 'DICM' marker after the 128-byte preamble "
            "(File Meta Information missing, or not DICOM at all)"
        )

    def parse(stop_before_pixels: bool) -> FileDataset:
        fp = io.BytesIO(target) if isinstance(target, bytes) else target
        return pydicom.dcmread(fp, force=False, defer_size=defer, stop_before_pixels=stop_before_pixels)

    try:
        with pydicom_warnings_caught() as caught:
            ds = parse(False)
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
                ds = parse(True)
        except HEADER_ERRORS + (RecursionError,):
            raise NotDicomError("DICOM file is truncated") from None
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        raise NotDicomError("DICOM File Meta Information has no Transfer Syntax UID")
    if "SOPClassUID" not in ds and "MediaStorageSOPClassUID" not in meta:
        raise NotDicomError("DICOM header has no SOP Class UID: not a DICOM object")
    return DicomFile(ds, truncated=truncated)


def drop_deferred(ds: FileDataset) -> None:
    """Remove the values of ``ds`` that are still in its file, unread (see :func:`read_dataset`), so
    that it can outlive the file: what was used (the pixel data, once decoded) stays."""
    raw = ds._dict  # noqa: SLF001 - pydicom keeps unread (deferred) values as raw elements there
    for tag in [tag for tag, elem in raw.items()
                if isinstance(elem, RawDataElement) and elem.value is None and elem.length != 0]:
        del ds[tag]
