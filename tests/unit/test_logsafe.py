from __future__ import annotations

import logging
import warnings

from secondreader.logsafe import (
    PhiRedactingFilter,
    configure_logging,
    redact,
    redact_report_text,
    set_secret,
    study_key,
)


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


def test_a_dicom_librarys_warning_is_logged_without_its_text() -> None:
    # what logging.captureWarnings makes of highdicom's warning about an odd PatientName: the name has
    # no "^", so no pattern would recognise it
    text = warnings.formatwarning('The string "CANARY ZEBEDEE" is unlikely to represent the intended person name',
                                  UserWarning, "/usr/lib/python3/site-packages/highdicom/sr/value_types.py", 220)
    record = logging.LogRecord("py.warnings", logging.WARNING, __file__, 1, "%s", (text,), None)
    PhiRedactingFilter().filter(record)
    assert "CANARY" not in record.getMessage()
    assert record.getMessage() == "a UserWarning from highdicom (its text may quote header values: not logged)"
    # other libraries' warnings keep their (redacted) text
    other = warnings.formatwarning("an op is deprecated", FutureWarning, "/x/site-packages/torch/nn/f.py", 3)
    record = logging.LogRecord("py.warnings", logging.WARNING, __file__, 1, "%s", (other,), None)
    PhiRedactingFilter().filter(record)
    assert "an op is deprecated" in record.getMessage()


def test_the_dicom_libraries_user_warnings_are_ignored_process_wide() -> None:
    before = list(warnings.filters)
    try:
        configure_logging("WARNING")
        for module in ("pydicom.valuerep", "highdicom.valuerep", "pynetdicom.dsutils"):
            with warnings.catch_warnings(record=True) as caught:
                # keep the filters configure_logging installed, minus pytest's "error" override
                warnings.filters[:] = [f for f in warnings.filters if f[0] != "error"]
                warnings.warn_explicit("CANARY^ZEBEDEE", UserWarning, f"/x/{module}.py", 1, module=module)
            assert caught == [], module
    finally:
        warnings.filters[:] = before
        logging.captureWarnings(False)


def test_access_log_lines_keep_the_route_and_mask_everything_else() -> None:
    line = ('127.0.0.1:5000 - "GET /v1/studies/1.2.840.113619.2.55.3/instances/1.2.840.113619.2.55.3.1/heatmaps/'
            'nodule.layer.png?token=DOE HTTP/1.1" 200')
    assert redact(line) == ('127.0.0.1:5000 - "GET /v1/studies/<id>/instances/<id>/heatmaps/nodule.layer.png?... '
                            'HTTP/1.1" 200')
    assert redact('"GET /v1/studies/study:54ade8dd02edddea HTTP/1.1" 404') == '"GET /v1/studies/<id> HTTP/1.1" 404'
    # a segment that is no route word is masked, whatever it looks like
    assert redact("GET /v1/smith_john.png") == "GET /v1/<id>"
    assert redact("POST /v1/screen?wait=0") == "POST /v1/screen?..."
    # outside request lines, paths are still masked
    assert redact("wrote /data/DOE_JOHN/x.dcm") == "wrote <path>"


def test_hl7_message_types_and_ip_addresses_are_not_taken_for_names_or_uids() -> None:
    assert redact("HL7 message rejected: ORU^R01 message has no OBR segment") == (
        "HL7 message rejected: ORU^R01 message has no OBR segment")
    assert redact("refusing to serve on 0.0.0.0 without API keys") == "refusing to serve on 0.0.0.0 without API keys"
    assert redact("ADT^A08^ADT_A01 from DOE^JANE") == "ADT^A08^ADT_A01 from <name>"
    assert redact("study 1.2.840.10008.5.1.4") == "study <uid>"


def test_a_report_sentence_loses_names_identifiers_and_dates_but_keeps_its_findings() -> None:
    sentence = "patient canary^zebedee, mrn pidcanary42, seen by john smith on 28/11/2026: no consolidation."
    masked = redact_report_text(sentence)
    for leak in ("canary", "zebedee", "pidcanary42", "john", "smith", "2026"):
        assert leak not in masked, leak
    assert masked.endswith("no consolidation.") and "seen by <name>" in masked and "mrn <id>" in masked
    assert redact_report_text("Signed by: Dr. Jane Doe. Accession # A1234567.") == (
        "Signed by: <name>. Accession # <id>.")
    # clinical words and small numbers stay
    clinical = "a 5 mm nodule in the right upper lobe, unchanged since the prior study; no pneumothorax."
    assert redact_report_text(clinical) == clinical
