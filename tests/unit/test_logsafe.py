from __future__ import annotations

import logging

from secondreader.logsafe import PhiRedactingFilter, redact, set_secret, study_key


def test_study_key_is_a_stable_pseudonym() -> None:
    set_secret(b"k1")
    a = study_key("1.2.3.4.5")
    assert a == study_key("1.2.3.4.5") and len(a) == 16 and "1.2.3" not in a
    set_secret(b"k2")
    assert study_key("1.2.3.4.5") != a


def test_redaction_masks_uids_names_and_paths() -> None:
    text = redact("study 1.2.840.113619.2.55 of CANARY^PHI at /data/CANARY/file.dcm failed")
    assert "CANARY" not in text and "1.2.840" not in text and "/data" not in text


def test_filter_drops_exception_text() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed on %s", ("DOE^JOHN",), None)
    try:
        raise ValueError("DOE^JOHN was here")
    except ValueError as exc:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    PhiRedactingFilter().filter(record)
    assert "DOE" not in record.getMessage() and record.exc_info is None
    assert "ValueError" in record.getMessage()
