"""Exceptions raised by secondreader.

Every message names what was wrong in words a PACS administrator understands and never contains
patient data (names, IDs, dates, free text, file paths). Protocol codes (HTTP, DIMSE) are chosen
only at the boundaries from this hierarchy::

    SecondReaderError
    ├── InvalidInputError            bad input: the sender can fix it
    │   ├── NotDicomError            not a DICOM Part 10 file (no preamble/meta, truncated header)
    │   ├── UnsupportedImageError    DICOM, but pixels we cannot or will not decode
    │   │   └── CorruptPixelDataError    compressed stream or pixel data is broken/truncated
    │   ├── IneligibleStudyError     a valid object that the models are not made for
    │   └── InvalidReportError       a first read (JSON, HL7 v2, FHIR) we cannot use
    ├── ProcessingError              failure on our side
    │   ├── ModelError               model card, weights or inference
    │   └── OutputEncodingError      writing results (PNG, DICOM outputs)
    └── InfrastructureError          systems we depend on
        ├── StoreError
        ├── StorageError             the spool and artefact storage (a folder, an S3 bucket)
        └── PacsError
"""

from __future__ import annotations

__all__ = [
    "CorruptPixelDataError",
    "IneligibleStudyError",
    "InfrastructureError",
    "InvalidInputError",
    "InvalidReportError",
    "ModelError",
    "NotDicomError",
    "OutputEncodingError",
    "PacsError",
    "ProcessingError",
    "SecondReaderError",
    "StorageError",
    "StoreError",
    "UnsupportedImageError",
]


class SecondReaderError(Exception):
    """Base of every error secondreader raises on purpose."""


class InvalidInputError(SecondReaderError):
    """The input is bad; the message says how."""


class NotDicomError(InvalidInputError):
    """The bytes are not a readable DICOM Part 10 file."""


class UnsupportedImageError(InvalidInputError):
    """The object is DICOM but its pixels cannot be used."""


class CorruptPixelDataError(UnsupportedImageError):
    """The pixel data (or its compressed codestream) is damaged or truncated."""


class IneligibleStudyError(InvalidInputError):
    """The object is valid but outside what the models are made for."""


class InvalidReportError(InvalidInputError):
    """A first read that cannot be used (no study identifier, no text, malformed message)."""


class ProcessingError(SecondReaderError):
    """Something failed on our side."""


class ModelError(ProcessingError):
    """Model card, weights or inference failed."""


class OutputEncodingError(ProcessingError):
    """An output (PNG overlay, DICOM object) could not be written."""


class InfrastructureError(SecondReaderError):
    """A system we depend on failed."""


class StoreError(InfrastructureError):
    """The result/job store failed."""


class StoreConflictError(StoreError):
    """A transaction lost a race with another one (a duplicate key, a lock or a serialisation
    failure): running it again sees the other's work."""


class StorageError(InfrastructureError):
    """The storage of the spool and artefacts (a local folder or an S3 bucket) failed."""


class PacsError(InfrastructureError):
    """The PACS refused or could not be reached."""
