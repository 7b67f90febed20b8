"""Issue 30, finding 10: reasons name the attribute and the problem, never a sender's value.

Before the fix, an ineligible instance's reason quoted Body Part Examined, View Position and Modality
verbatim, so a name placed in one of them reached the result, the worklist and the quarantine sidecar."""

from __future__ import annotations

import pytest

from secondreader.dicom.eligibility import evaluate
from secondreader.dicom.instance import CxrInstance
from secondreader.dicom.terms import BODY_PARTS, shown

from ..conftest import CANARY_NAME
from ..factories import make_cxr_dataset

HOSTILE = "CANARY PHI"  # what a CS-valued attribute can hold (CANARY_NAME's caret is not a CS character)


@pytest.mark.parametrize(("attribute", "kwargs"), [
    ("Body Part Examined", {"body_part": HOSTILE}),
    ("View Position", {"view_position": HOSTILE}),
    ("Modality", {"modality": HOSTILE}),
    ("Body Part Examined", {"body_part": CANARY_NAME}),
])
def test_an_ineligible_reason_does_not_quote_the_value(attribute: str, kwargs: dict[str, str]) -> None:
    result = evaluate(CxrInstance.from_dataset(make_cxr_dataset(rows=300, cols=300, **kwargs)))
    assert not result.ok and attribute in (result.reason or "")
    assert "CANARY" not in (result.reason or "") and "not a defined term" in (result.reason or "")


def test_a_defined_term_is_still_named() -> None:
    assert shown("hip", BODY_PARTS) == "HIP" and shown(None, BODY_PARTS) == "missing"
    result = evaluate(CxrInstance.from_dataset(make_cxr_dataset(rows=300, cols=300, view_position="LL")))
    assert result.reason == "not a frontal view: View Position LL"


def test_every_handler_is_redacted_tracebacks_included(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 8: a library's own handler (BentoML's prints on stdout, with tracebacks) sees records
    already redacted; before the fix only the handler configure_logging made had the filter."""
    import io
    import logging
    import sys
    import threading

    from secondreader import logsafe

    monkeypatch.setattr(logsafe, "_installed", False)
    factory = logging.getLogRecordFactory()
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    stream = io.StringIO()
    own = logging.getLogger("bentoml-like")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    own.addHandler(handler)
    own.propagate = False
    uid = "1.2.826.0.1.3680043.8.498.1234567890"
    try:
        logsafe.install_redaction()
        try:
            raise KeyError(f"{uid} {CANARY_NAME} /srv/secondreader/home/spool/x.dcm")
        except KeyError:
            own.exception("Exception in ASGI application for %s", uid)
    finally:
        logging.setLogRecordFactory(factory)
        own.removeHandler(handler)
    text = stream.getvalue()
    assert "Exception in ASGI application" in text and "[KeyError]" in text
    assert uid not in text and "CANARY" not in text and "/srv/" not in text and "Traceback" not in text
