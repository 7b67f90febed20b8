"""API keys, the failed-attempt limit per client address, and the pseudonymous access log."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from secondreader.logsafe import set_secret, study_key
from secondreader.service.access import AccessLogFilter, pseudonymous_path
from secondreader.service.auth import ApiKeyMiddleware, FailedAuthLimiter, bearer_token

KEY = "right-key-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _app(limiter: FailedAuthLimiter) -> ApiKeyMiddleware:
    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    inner = Starlette(routes=[Route("/v1/x", hello), Route("/healthz", hello)])
    return ApiKeyMiddleware(inner, keys=[KEY, "other-key"], limiter=limiter)


def _client(app: ApiKeyMiddleware, address: str) -> TestClient:
    return TestClient(app, client=(address, 40000))


def test_keys_and_open_paths() -> None:
    client = _client(_app(FailedAuthLimiter(5, 60)), "10.0.0.1")
    assert client.get("/v1/x", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/v1/x", headers={"Authorization": "Bearer other-key"}).status_code == 200
    assert client.get("/v1/x", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert client.get("/v1/x", headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401
    assert client.get("/v1/x", headers={"Authorization": f"Bearer {KEY[:-1]}"}).status_code == 401
    assert client.get("/v1/x").status_code == 401
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER abc", "abc"), (b"Bearer abc", "abc"),
    ("Basic abc", ""), ("Bearer", ""), ("Bearerabc", ""), ("", ""), (None, ""), ("abc", ""),
])
def test_one_bearer_parser_for_the_middleware_and_the_review_log(header: str | bytes | None, token: str) -> None:
    assert bearer_token(header) == token


def test_a_lower_case_scheme_passes_the_key_check_and_another_scheme_does_not() -> None:
    client = TestClient(_app(FailedAuthLimiter()))
    assert client.get("/v1/x", headers={"Authorization": f"bearer {KEY}"}).status_code == 200
    assert client.get("/v1/x", headers={"Authorization": f"Basic {KEY}"}).status_code == 401


def test_failed_attempts_get_429_per_address_until_the_window_passes() -> None:
    clock = Clock()
    app = _app(FailedAuthLimiter(3, 60, clock=clock))
    attacker, neighbour = _client(app, "10.0.0.66"), _client(app, "10.0.0.7")
    codes = [attacker.get("/v1/x", headers={"Authorization": f"Bearer guess{i}"}).status_code for i in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    refused = attacker.get("/v1/x", headers={"Authorization": f"Bearer {KEY}"})
    assert refused.status_code == 429, "a refused address is refused even with the right key"
    assert refused.json()["error"] == "too many requests" and int(refused.headers["retry-after"]) >= 1
    # Another address is unaffected, and health probes stay open for the refused one.
    assert neighbour.get("/v1/x", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert attacker.get("/healthz").status_code == 200
    clock.now += 61
    assert attacker.get("/v1/x", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_sliding_window_forgets_old_failures() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(3, 10, clock=clock)
    for _ in range(2):
        limiter.failed("a")
        clock.now += 6
    limiter.failed("a")  # the first failure is 12 s old: only 2 in the window
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(10)


def test_limiter_memory_is_bounded() -> None:
    limiter = FailedAuthLimiter(1, 60, max_clients=100)
    for i in range(1000):
        limiter.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(limiter._failures) == 100
    assert limiter.retry_after("10.1.3.231") > 0 and limiter.retry_after("10.1.0.0") == 0


@pytest.mark.parametrize(("failures", "window"), [(0, 60), (3, 0), (3, -1)])
def test_limiter_rejects_nonsense(failures: int, window: float) -> None:
    with pytest.raises(ValueError):
        FailedAuthLimiter(failures, window)


def test_access_log_shows_study_keys_not_uids() -> None:
    set_secret(b"unit-test-secret")
    study, sop = "1.2.826.0.1.3680043.8.498.1234", "1.2.826.0.1.3680043.8.498.5678"
    path = f"/v1/studies/{study}/instances/{sop}/heatmaps/pneumonia.png?x={study}"
    shown = pseudonymous_path(path)
    assert shown == f"/v1/studies/study:{study_key(study)}/instances/<uid>/heatmaps/pneumonia.png"
    assert study not in shown and sop not in shown

    records = []
    for p in (path, "/readyz", "/v1/screen?wait=30"):
        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                                   ("127.0.0.1:5000", "GET", p, "1.1", 200), None)
        if AccessLogFilter().filter(record):
            records.append(record.getMessage())
    assert len(records) == 2, "health probes are not logged"
    assert f"study:{study_key(study)}" in records[0] and "1.2.826" not in records[0]
    assert records[1].endswith('"GET /v1/screen HTTP/1.1" 200')
