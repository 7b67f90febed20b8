"""The radiologist's page (``/viewer/``) in a real browser: Debian's chromium driven by Playwright
against the real BentoML service (in-process uvicorn on a loopback port), with a real sample
study screened and a first read posted.

Chromium reaches past loopback even when told not to, so the browser test runs only inside a
private network namespace (``unshare -n``; see ``.ci/run``)::

    unshare -n -- bash -c 'ip link set lo up; . .venv/bin/activate; python -m pytest tests/integration/test_viewer.py'

Screenshots (worklist, study, opacity 100 %, verdict, the JPEG 2000 image) go to the test's
``tmp_path``/``screenshots`` (recorded as the test's ``screenshots`` property in JUnit XML); add
``--basetemp=DIR`` to keep them where you want them.
"""

from __future__ import annotations

import io
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from ..conftest import CANARY_ID, CANARY_NAME, require
from ..conftest import testdata_file as sample_file
from ..orthanc import in_private_network_namespace
from ..readiness import free_port, wait_until_ready

pytestmark = [pytest.mark.weights, pytest.mark.slow]

KEY = "viewer-test-key-7f3a"
REVIEWER = "Dr Second Reader"
REPORT = "PA chest radiograph. Heart size is normal. No focal consolidation. No pleural effusion."
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[str]:
    """The BentoML service app (health routes, API-key middleware, /v1, /viewer) on a real socket."""
    import uvicorn

    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("viewer-home")
    mp.setenv("SECONDREADER_HOME", str(home))
    mp.setenv("SECONDREADER_API_KEYS", KEY)
    mp.setenv("SECONDREADER_MODELS_DIR", str(models_dir))
    mp.setenv("SECONDREADER_DICOM_PORT", "0")
    mp.setenv("SECONDREADER_HL7_PORT", "0")
    mp.delenv("SECONDREADER_SCREEN_SAMPLES", raising=False)
    from secondreader.service.bento import SecondReader

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(SecondReader.to_asgi(), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, timeout=120, poll=0.3,
                         stopped=lambda: None if thread.is_alive() else "the service stopped while starting")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        mp.undo()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def screened(service: str) -> dict[str, Any]:
    """A real chest CR study (pydicom-data's RG1: the image uncompressed and as JPEG 2000 lossless,
    which the browser decodes with its WebAssembly codec), the canary as patient, screened."""
    files = []
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        ds = pydicom.dcmread(sample_file(name))
        ds.PatientName = CANARY_NAME
        ds.PatientID = CANARY_ID
        ds.PatientAge = "004Y"  # a child's age: inside cxr-pneumonia's scope (RG1 is an adult's film)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(("files", (name, buffer.getvalue(), "application/dicom")))
    screened = httpx.post(f"{service}/v1/screen?wait=300", files=files, headers=_auth(), timeout=330)
    assert screened.status_code == 200, screened.text
    (result,) = screened.json()["studies"]
    assert result["status"] == "screened" and result["regions"], result
    assert [i["status"] for i in result["instances"]] == ["screened", "screened"], result["instances"]
    return dict(result)


@pytest.fixture(scope="module")
def study(service: str, screened: dict[str, Any]) -> dict[str, Any]:
    """The screened study after a first read that negates what the AI calls positive (discordant)."""
    uid = screened["study_instance_uid"]
    report = httpx.post(f"{service}/v1/reports", json={"study_instance_uid": uid, "text": REPORT},
                        headers=_auth(), timeout=60)
    assert report.status_code == 200, report.text
    assert "pneumonia" in report.json()["first_read"]["discordant"], report.json()["first_read"]
    return dict(report.json())


def test_the_page_is_served_without_a_key_and_confined(service: str) -> None:
    page = httpx.get(f"{service}/viewer/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "not for primary diagnosis" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    bundle = httpx.get(f"{service}/viewer/" + page.text.split('src="./', 1)[1].split('"', 1)[0])
    assert bundle.status_code == 200 and "javascript" in bundle.headers["content-type"]
    assert "immutable" in bundle.headers["cache-control"]
    # The page opens without a key; the data behind it does not.
    assert httpx.get(f"{service}/v1/worklist").status_code == 401


def test_the_heatmap_layer_is_a_transparent_png_over_the_source_grid(service: str, screened: dict[str, Any]) -> None:
    uid = screened["study_instance_uid"]
    region = screened["regions"][0]
    url = f"{service}/v1/studies/{uid}/instances/{region['sop_instance_uid']}/heatmaps/{region['finding']}.layer.png"
    assert httpx.get(url).status_code == 401
    response = httpx.get(url, headers=_auth())
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    layer = Image.open(io.BytesIO(response.content))
    assert layer.mode == "RGBA"
    ds = pydicom.dcmread(sample_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    rows, cols = int(ds.Rows), int(ds.Columns)
    assert abs(layer.height / rows - layer.width / cols) < 2 / max(layer.size)  # uniform reduction
    alpha = np.asarray(layer)[..., 3]
    r0, c0, r1, c1 = region["bbox"]
    sy, sx = layer.height / rows, layer.width / cols
    inside = alpha[int(r0 * sy):int(np.ceil(r1 * sy)), int(c0 * sx):int(np.ceil(c1 * sx))]
    # The region came from this heat: it is opaque inside the box, and most of the image is clear.
    assert inside.max() > 128
    assert (alpha == 0).mean() > 0.3
    missing = httpx.get(url.replace(".layer.png", "x.layer.png"), headers=_auth())
    assert missing.status_code == 404


def _overlay_alpha(page: Any) -> int:
    return int(page.evaluate("""() => {
        const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let sum = 0;
        for (let i = 3; i < d.length; i += 4) sum += d[i];
        return sum;
    }"""))


def _overlay_extent(page: Any) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of what the overlay canvas draws (with the heatmap off: the outlines)."""
    box = page.evaluate("""() => {
        const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let x0 = c.width, y0 = c.height, x1 = -1, y1 = -1;
        for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
            if (d[(y * c.width + x) * 4 + 3] === 0) continue;
            x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
        }
        return [x0, y0, x1, y1];
    }""")
    return int(box[0]), int(box[1]), int(box[2]), int(box[3])


def _grey(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, allowed only inside a private network namespace (checked before the
    service starts)."""
    require(in_private_network_namespace(),
            "chromium reaches past loopback: run the browser test inside `unshare -n` (see .ci/run)")
    require(shutil.which(CHROMIUM) is not None,
            "Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    return CHROMIUM


def test_a_radiologist_reviews_the_discordant_study_in_chromium(
    chromium: str, service: str, study: dict[str, Any], tmp_path: Path, record_property: Any
) -> None:
    from playwright.sync_api import sync_playwright

    uid = study["study_instance_uid"]
    region = study["regions"][0]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    record_property("screenshots", str(shots))
    urls: list[str] = []
    dicom_auth: list[str | None] = []
    problems: list[str] = []

    def on_request(request: Any) -> None:
        urls.append(request.url)
        if request.url.endswith("/dicom"):
            dicom_auth.append(request.headers.get("authorization"))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("request", on_request)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)

            # Sign in: a wrong key is refused on the page, the right one opens the worklist.
            page.goto(f"{service}/viewer/")
            page.fill("#api-key", "not-the-key")
            page.press("#api-key", "Enter")
            page.wait_for_selector("#login-error:has-text('refused')")
            problems.clear()  # the refused key's 401 is logged by the browser as a console error
            page.fill("#api-key", KEY)
            page.press("#api-key", "Enter")
            row = page.locator(f'#worklist tr[data-uid="{uid}"]')
            row.wait_for()
            route = study["priority"]["route"]
            assert route in ("urgent", "review")
            assert route in row.inner_text().lower() and "pneumonia" in row.inner_text()
            assert row.locator(".badge.discordant").inner_text() == "pneumonia"
            page.screenshot(path=shots / "worklist.png")

            # Filters: another route hides the study, its own route shows it.
            page.select_option("#filter-route", "none")
            page.wait_for_selector(f'#worklist tr[data-uid="{uid}"]', state="detached")
            page.select_option("#filter-route", route)
            row.wait_for()
            page.select_option("#filter-route", "")
            row.wait_for()

            # Open it with the keyboard.
            row.focus()
            page.keyboard.press("Enter")
            page.wait_for_selector('#viewport[data-rendered="true"]', timeout=60_000)
            page.wait_for_selector('#overlay[data-layer="loaded"]', timeout=30_000)
            page.wait_for_function("document.getElementById('viewport-message').textContent === ''")
            page.screenshot(path=shots / "study.png")
            # The nodule model (adults) does not apply to this child's study: shown as such, with its
            # reason, not as a negative.
            findings = page.inner_text("#findings")
            assert "nodule n/a" in findings and "not applicable" in findings, findings
            assert "cxr-nodule is validated on adults aged 18 years and over; patient age 004Y" in findings

            # The radiograph itself is on screen (heatmap off): a real image, not a blank canvas.
            viewport = page.locator("#viewport")
            page.focus("#viewport")
            page.keyboard.press("h")
            image = _grey(viewport.screenshot())
            assert image.std() > 20 and len(np.unique(image.round())) > 64, (image.std(), len(np.unique(image)))

            # Window/level with the left button (drag), then reset; the same with the keyboard.
            box = viewport.bounding_box()
            assert box is not None
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + 200, cy + 120, steps=8)
            page.mouse.up()
            leveled = _grey(viewport.screenshot())
            assert np.abs(leveled - image).mean() > 5
            page.keyboard.press("0")
            assert np.abs(_grey(viewport.screenshot()) - image).mean() < 1
            page.keyboard.press("Shift+ArrowLeft")
            page.keyboard.press("Shift+ArrowLeft")
            assert np.abs(_grey(viewport.screenshot()) - image).mean() > 2
            # Zoom and pan from the keyboard; the region outlines follow the image (longer when zoomed).
            page.keyboard.press("0")
            outlines = _overlay_extent(page)
            page.keyboard.press("+")
            zoomed = _grey(viewport.screenshot())
            assert np.abs(zoomed - image).mean() > 2
            grown = _overlay_extent(page)
            assert grown[3] - grown[1] > 1.15 * (outlines[3] - outlines[1]), (outlines, grown)
            page.keyboard.press("ArrowRight")
            assert np.abs(_grey(viewport.screenshot()) - zoomed).mean() > 1
            page.keyboard.press("0")
            assert np.abs(_grey(viewport.screenshot()) - image).mean() < 1
            assert _overlay_extent(page) == outlines
            page.keyboard.press("h")

            # The opacity slider changes the overlay (keyboard on the slider: End = 100 %, Home = 0 %).
            at_50 = _overlay_alpha(page)
            page.focus("#heat-opacity")
            page.keyboard.press("End")
            assert page.input_value("#heat-opacity") == "100"
            at_100 = _overlay_alpha(page)
            page.screenshot(path=shots / "study-opacity-100.png")
            page.keyboard.press("Home")
            at_0 = _overlay_alpha(page)
            assert at_0 < at_50 < at_100, (at_0, at_50, at_100)
            assert at_0 > 0  # the region outlines stay

            # The first read, with the sentence that negated the AI's finding marked as discordant.
            marked = page.locator("#report-text mark.discordant")
            assert "consolidation" in marked.inner_text().lower()
            assert REPORT.split(".")[1].strip() in page.inner_text("#report-text")

            # A verdict on the top region, with the reviewer's name, shows up on the page and in the API.
            page.fill("#reviewer", REVIEWER)
            card = page.locator(f'#regions .region[data-region="{region["id"]}"]')
            card.locator('button[data-verdict="confirmed_miss"]').click()
            card.locator(".recorded li", has_text="Confirmed miss").wait_for()
            assert REVIEWER in card.locator(".recorded").inner_text()
            assert card.locator('button[aria-pressed="true"]').inner_text() == "Confirmed miss"
            page.screenshot(path=shots / "verdict.png")

            # The first read per finding: what the report says and the sentence it was read from. A
            # reviewer who reads the report otherwise overrules the labeler in one click ("the
            # labeler was wrong"); the study is compared with the AI again.
            reads = page.locator("#first-read-table")
            pneumonia = reads.locator('tr[data-finding="pneumonia"]')
            assert pneumonia.locator(".says").inner_text() == "negated"
            assert "read by the labeler" in pneumonia.inner_text()
            assert "No focal consolidation." in pneumonia.locator('blockquote[data-sentence="pneumonia"]').inner_text()
            assert pneumonia.locator(".badge.discordant").count() == 1
            pneumonia.locator('.overrule button[data-label="present"]').click()
            pneumonia.locator(".corrected", has_text="the labeler read negated").wait_for()
            assert REVIEWER in pneumonia.locator(".corrected").inner_text()
            assert pneumonia.locator(".says").inner_text() == "present"
            assert pneumonia.locator(".badge.discordant").count() == 0
            assert pneumonia.locator('.overrule button[aria-pressed="true"]').inner_text() == "present"
            assert "No focal consolidation." in pneumonia.locator("blockquote").inner_text()  # still shown
            page.screenshot(path=shots / "first-read-corrected.png")

            # The study's other image (JPEG 2000): decoded in the browser's worker and rendered.
            other = next(i["sop_instance_uid"] for i in study["instances"]
                         if i["sop_instance_uid"] != region["sop_instance_uid"])
            page.select_option("#instance", other)
            page.wait_for_selector('#viewport[data-rendered="true"]', timeout=60_000)
            page.wait_for_selector('#overlay[data-layer="loaded"]', timeout=30_000)
            page.wait_for_function("document.getElementById('viewport-message').textContent === ''")
            second = _grey(page.locator("#viewport").screenshot())
            assert second.std() > 20 and len(np.unique(second.round())) > 64
            page.screenshot(path=shots / "study-jpeg2000.png")

            body = page.inner_text("body") + page.content()
            assert CANARY_NAME not in body and "CANARY" not in body and CANARY_ID not in body
        finally:
            browser.close()

    stored = httpx.get(f"{service}/v1/studies/{uid}", headers=_auth()).json()
    assert any(r["region_id"] == region["id"] and r["verdict"] == "confirmed_miss" and r["reviewer"] == REVIEWER
               for r in stored["reviews"]), stored["reviews"]
    correction = stored["first_read"]["corrections"]["pneumonia"]
    assert (correction["label"], correction["labeler_label"]) == ("present", "negated")
    assert correction["reviewer"] == REVIEWER
    assert stored["first_read"]["labels"]["pneumonia"] == "present" and stored["first_read"]["discordant"] == []
    # The key never travelled in a URL; the image loader sent it as a header.
    assert urls and not [u for u in urls if KEY in u]
    assert dicom_auth and all(a == f"Bearer {KEY}" for a in dicom_auth), dicom_auth
    assert not problems, problems
    assert {p.name for p in shots.iterdir()} >= {"worklist.png", "study.png", "verdict.png"}


def test_every_frame_of_a_multi_frame_image_is_viewable(chromium: str, service: str, tmp_path: Path) -> None:
    """Issue 30 (leftover): the page showed frame 1 only. A two-frame radiograph: the frame chooser
    appears, frame 2's pixels, heatmap layer and regions are shown, and a region on frame 2 opens it."""
    from playwright.sync_api import sync_playwright

    from ..factories import make_cxr_dataset, to_bytes

    ds = make_cxr_dataset(512, 512, frames=2, lesion_at=(250, 300))
    ds.PatientAge = "004Y"  # inside cxr-pneumonia's scope
    screened = httpx.post(f"{service}/v1/screen?wait=300", content=to_bytes(ds), timeout=330,
                          headers={**_auth(), "Content-Type": "application/dicom"})
    assert screened.status_code == 200, screened.text
    (result,) = screened.json()["studies"]
    assert result["status"] == "screened", result
    assert any(h.endswith("-frame2.png") for h in result["artifacts"]["heatmaps"]), result["artifacts"]
    uid = result["study_instance_uid"]
    layers: list[str] = []
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("request", lambda r: layers.append(r.url.rsplit("/", 1)[1]) if ".layer.png" in r.url else None)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.goto(f"{service}/viewer/")
            page.fill("#api-key", KEY)
            page.press("#api-key", "Enter")
            row = page.locator(f'#worklist tr[data-uid="{uid}"]')
            row.wait_for()
            row.click()
            page.wait_for_selector('#viewport[data-rendered="true"]', timeout=60_000)
            page.wait_for_selector('#overlay[data-layer="loaded"]', timeout=30_000)
            assert page.locator("label.frame").is_visible()
            assert page.locator("#frame option").count() == 2
            first = _grey(page.locator("#viewport").screenshot())
            page.select_option("#frame", "2")
            page.wait_for_function("document.getElementById('frame').value === '2'")
            page.wait_for_selector('#viewport[data-rendered="true"]', timeout=60_000)
            page.wait_for_selector('#overlay[data-layer="loaded"]', timeout=30_000)
            page.wait_for_function("document.getElementById('viewport-message').textContent === ''")
            second = _grey(page.locator("#viewport").screenshot())
            assert second.std() > 5 and first.shape == second.shape
            assert "pneumonia-frame2.layer.png" in layers and "pneumonia.layer.png" in layers
            # a region on frame 1 brings frame 1 back
            on_first = next(r for r in result["regions"] if r["frame"] == 1)
            page.locator(f'#regions .region[data-region="{on_first["id"]}"]').click()
            page.wait_for_function("document.getElementById('frame').value === '1'")
        finally:
            browser.close()
    assert not problems, problems
