"""Mutated DICOM files never crash the reader: each gives a parsed header or a NotDicomError/
UnsupportedImageError with a reason, and no reason carries patient data."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import JPEG2000Lossless

from secondreader.dicom.eligibility import evaluate
from secondreader.dicom.instance import CxrInstance
from secondreader.dicom.io import read_dataset, sniff_non_dicom
from secondreader.dicom.pixels import decode_display
from secondreader.errors import SecondReaderError

from ..conftest import CANARY_ID
from ..factories import make_cxr_dataset, to_bytes

BASE = to_bytes(make_cxr_dataset(256, 256, bits_stored=12))
BASE_J2K = to_bytes(make_cxr_dataset(256, 256, bits_stored=12, transfer_syntax=JPEG2000Lossless))
BASES = {"uncompressed": BASE, "jpeg2000": BASE_J2K}


def _process(data: bytes) -> str:
    """Everything the pipeline does to one file short of the model; returns the outcome."""
    try:
        dicom = read_dataset(data)
        ds = dicom.dataset
        inst = CxrInstance.from_dataset(ds, pixel_data_truncated=dicom.truncated)
        if dicom.truncated:
            return "truncated"
        if evaluate(inst).ok:
            image = decode_display(ds, inst, max_pixels=4_000_000)
            assert np.isfinite(image.frames).all()
        return "ok"
    except SecondReaderError as exc:
        message = str(exc)
        assert message and "CANARY" not in message and CANARY_ID not in message
        return message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(BASES)), cut=st.integers(0, len(BASE)))
def test_truncated_files(kind: str, cut: int) -> None:
    base = BASES[kind]
    _process(base[: min(cut, len(base))])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(BASES)),
       flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 255)), min_size=1, max_size=8))
def test_flipped_header_bytes(kind: str, flips: list[tuple[int, int]]) -> None:
    data = bytearray(BASES[kind])
    for position, xor in flips:
        if position < len(data):
            data[position] ^= xor
    _process(bytes(data))


def test_lying_rows_and_frames_fail_before_allocation() -> None:
    ds = make_cxr_dataset(256, 256)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 50000, 50000, 1000
    outcome = _process(to_bytes(ds))
    assert "too large to decode" in outcome


def test_non_dicom_kinds_are_named() -> None:
    assert sniff_non_dicom(b"\x89PNG\r\n\x1a\n....") == "a PNG image"
    assert sniff_non_dicom(b"%PDF-1.7") == "a PDF document"
    assert sniff_non_dicom(b"hello\nworld") == "a text file"
    assert sniff_non_dicom(bytes(range(256))) is None
    assert _process(b"\0" * 10) .startswith("not a DICOM Part 10 file")
