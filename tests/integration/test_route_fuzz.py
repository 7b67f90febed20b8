"""Issue 30, finding 7: malformed client input is a 400 (or another 4xx) on every route, never a 5xx.

The regressions first (each gave a 500 before): a 300-digit UID on the heatmap routes (a file name
too long for the file system), ``limit=²`` (``str.isdigit`` accepts it, ``int`` does not), JSON nested
100,000 deep on reports, FHIR and reviews (RecursionError). Then hypothesis drives every /v1 route with
hostile path segments, query values, headers and bodies and asserts no 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from secondreader.errors import InvalidInputError
from secondreader.service.auth import ApiKeyMiddleware
from secondreader.service.core import ScreeningService
from secondreader.service.http import build_app
from secondreader.service.validation import is_uid, json_depth, loads_json, strict_int
from secondreader.store import Store

from ..conftest import CANARY_NAME

KEY = "route-fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
DEEP = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 50_000 + "1" + "}" * 50_000  # under the 390 KiB body limit


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, pneumonia_predictor) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    home: Path = tmp_path_factory.mktemp("fuzz-home")
    store = Store(f"sqlite:///{home / 'sr.db'}")
    store.migrate()
    core = ScreeningService(store, [pneumonia_predictor], home=home, max_image_pixels=4_000_000, workers=1)
    app = ApiKeyMiddleware(build_app(lambda: core, max_upload_bytes=lambda: 4 * 1024**2), keys=[KEY])
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        yield c
    core.close()


def test_the_shared_helpers() -> None:
    assert is_uid("1.2.840.10008.5.1.4.1.1.1") and is_uid("1" * 64)
    for bad in ("1" * 65, "1..2", ".1", "1.", "١.٢", "1.2\n", "", "²", None, 12):
        assert not is_uid(bad)
    assert strict_int("42", "n", low=1, high=50) == 42
    for bad in ("²", "٣", "1_0", " 1", "-1", "+1", "1e3", "9" * 40, "51"):
        with pytest.raises(InvalidInputError, match="n must be a whole number"):
            strict_int(bad, "n", low=1, high=50)
    assert json_depth('{"a": "[[[[[[", "b": [1, [2]]}') == 3
    with pytest.raises(InvalidInputError, match="nested deeper than"):
        loads_json(DEEP)


def test_the_regressions_are_400(client: TestClient) -> None:
    uid = "1" * 300
    for suffix in ("pneumonia.png", "pneumonia.layer.png"):
        response = client.get(f"/studies/{uid}/instances/{uid}/heatmaps/{suffix}", headers=AUTH)
        assert response.status_code == 400, response.text
    for value in ("²", "٣", "1e3", "-1", "0", "5001"):
        response = client.get("/worklist", params={"limit": value}, headers=AUTH)
        assert response.status_code == 400 and "limit" in response.json()["reason"]
    for content_type, body in (("application/json", DEEP), ("application/fhir+json", DEEP_OBJECT),
                               ("application/json", DEEP_OBJECT)):
        response = client.post("/reports", content=body, headers={**AUTH, "Content-Type": content_type})
        assert response.status_code == 400 and "nested deeper" in response.json()["reason"]
    response = client.post("/studies/1.2.3/reviews", content=DEEP, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400
    response = client.post("/screen", content=b"x", headers={**AUTH, "Content-Length": "²".encode("latin-1"),
                                                              "Content-Type": "application/dicom"})
    assert response.status_code == 400
    response = client.post("/admin/outbox/²/retry", headers=AUTH)
    assert response.status_code == 404


def test_a_client_key_is_not_echoed(client: TestClient) -> None:
    response = client.post("/reports", json={"accession_number": "A", "findings": {CANARY_NAME: "maybe"}}, headers=AUTH)
    assert response.status_code == 400 and CANARY_NAME not in response.text


_TEXT = st.one_of(st.text(max_size=80), st.from_regex(r"[0-9.]{0,400}", fullmatch=True),
                  st.sampled_from(["²", "٣", "1" * 300, "..", "%00", "\x00", "1.2.3", "-1", "nan", "1e999", "",
                                   "9" * 40, "pneumonia", "a" * 5000]))
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                   max_size=4), max_leaves=20)
_BODY = st.one_of(st.binary(max_size=2000), _JSON.map(lambda v: json.dumps(v).encode()),
                  st.integers(1, 5000).map(lambda n: ("[" * n + "]" * n).encode()),
                  st.fixed_dictionaries({"study_instance_uid": _TEXT, "accession_number": _TEXT, "text": _TEXT,
                                         "findings": st.dictionaries(_TEXT, _TEXT, max_size=3),
                                         "region_id": _TEXT, "verdict": _TEXT, "reviewer": _TEXT,
                                         "finding": _TEXT, "label": _TEXT}).map(lambda v: json.dumps(v).encode()))
_CONTENT_TYPES = st.sampled_from(["application/json", "application/fhir+json", "application/hl7-v2",
                                  "application/dicom", "application/zip", "multipart/form-data; boundary=x",
                                  "multipart/related; type=\"application/dicom\"; boundary=x", "text/plain", ""])
_ROUTES = [
    ("GET", "/jobs/{a}"), ("GET", "/studies/{a}"), ("GET", "/studies/{a}/instances/{b}/dicom"),
    ("GET", "/studies/{a}/instances/{b}/heatmaps/{c}.png"),
    ("GET", "/studies/{a}/instances/{b}/heatmaps/{c}.layer.png"),
    ("POST", "/studies/{a}/reviews"), ("POST", "/reports"), ("GET", "/worklist"), ("GET", "/worklist/rates"),
    ("GET", "/reviews/manifest.csv"), ("POST", "/screen"), ("POST", "/dicomweb/studies"), ("GET", "/admin/outbox"),
    ("POST", "/admin/outbox/{a}/retry"),
]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(route=st.sampled_from(_ROUTES), a=_TEXT, b=_TEXT, c=_TEXT, body=_BODY, content_type=_CONTENT_TYPES,
       query=st.dictionaries(st.sampled_from(["limit", "state", "route", "days", "wait", "status"]), _TEXT,
                             max_size=3))
def test_no_route_answers_5xx(client: TestClient, route: tuple[str, str], a: str, b: str, c: str, body: bytes,
                              content_type: str, query: dict[str, str]) -> None:
    method, template = route
    path = template.format(a=quote(a, safe=""), b=quote(b, safe=""), c=quote(c, safe=""))
    query = {k: v.replace("\x00", "") for k, v in query.items()}
    if "wait" in query or template == "/screen":
        query["wait"] = "0"  # never wait on a job: only the input handling is under test
    headers = {**AUTH, "Content-Type": content_type}
    response = client.request(method, path, params=query, headers=headers,
                              content=body if method == "POST" else None)
    assert response.status_code < 500, (method, template, response.status_code, response.text[:200])
