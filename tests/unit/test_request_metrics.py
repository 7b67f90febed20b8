"""/metrics and request metrics by route template: no study UID ever becomes a label."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from secondreader.service.metrics import MetricsMiddleware, route_of

UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def test_paths_map_to_their_route_templates() -> None:
    assert route_of(f"/v1/studies/{UID}") == "/v1/studies/{study_uid}"
    assert route_of(f"/v1/studies/{UID}/instances/{UID}.1/heatmaps/pneumonia.png") == \
        "/v1/studies/{study_uid}/instances/{sop_uid}/heatmaps/{finding}.png"
    assert route_of(f"/v1/studies/{UID}/reviews") == "/v1/studies/{study_uid}/reviews"
    assert route_of("/v1/jobs/" + "a" * 32) == "/v1/jobs/{job_id}"
    assert route_of("/viewer/assets/index-abc.js") == "/viewer"
    assert route_of(f"/wp-admin/{UID}") == "other"  # unknown paths share one series


def test_metrics_are_served_and_requests_counted_by_template() -> None:
    async def study(request):  # type: ignore[no-untyped-def]
        return PlainTextResponse("x", status_code=404)

    app = MetricsMiddleware(Starlette(routes=[Route("/v1/studies/{uid}", study)]))
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get(f"/v1/studies/{UID}").status_code == 404
        assert client.get(f"/nowhere/{UID}").status_code == 404
        metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'secondreader_http_requests_total{code="404",method="GET",route="/v1/studies/{study_uid}"}' in metrics.text
    assert 'route="other"' in metrics.text
    assert UID not in metrics.text
