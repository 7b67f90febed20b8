"""Our DICOM outputs in the viewer a radiologist's site is likeliest to run: OHIF (the built viewer of
the npm package ``@ohif/app``, pinned) against Orthanc's DICOMweb, in Debian's chromium.

Screened in the test: a one-image adult study (negative with the adult pneumonia model: its SR has
no region and its SEG an empty segment) and a two-image child study (positive on both images). The
sources and every output go into Orthanc; each SEG and SR is then opened in OHIF as a user would
(double-click in the study browser). Any page error fails the test. What a radiologist would see is
checked: the SEG overlay's coloured pixels on the image, each SR's regions listed by finding name
with the region's own probability in percent, and both images' objects in the study browser.
Screenshots are kept (``record_property("screenshots", ...)``).
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from secondreader.dicom.io import InputFile
from secondreader.pipeline import ScreeningOptions, screen_inputs

from ..conftest import require
from ..factories import make_cxr_dataset, write
from ..ohif import OhifServer, ohif_dist
from ..orthanc import Orthanc, in_private_network_namespace

pytestmark = [pytest.mark.weights, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
# Software WebGL (SwiftShader) for cornerstone3D; no name resolves but loopback.
CHROMIUM_ARGS = [
    "--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
SEG_LABEL = "AI RESULT regions SEG"
SR_LABEL = "AI RESULT report"


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory, pneumonia_predictor: Any,
            adult_pneumonia_predictor: Any) -> dict[str, Any]:
    """The two studies screened, with their result JSON and output folder."""
    src = tmp_path_factory.mktemp("ohif-src")
    out = tmp_path_factory.mktemp("ohif-out")
    options = ScreeningOptions(predictors=[pneumonia_predictor, adult_pneumonia_predictor], out_dir=out)
    single = make_cxr_dataset(640, 560, window=(2048, 4096), patient_age="053Y")
    first = make_cxr_dataset(640, 560, lesion_at=(300, 200), window=(2048, 4096))
    second = make_cxr_dataset(640, 560, window=(2048, 4096), study_uid=str(first.StudyInstanceUID))
    second.SeriesInstanceUID, second.InstanceNumber = first.SeriesInstanceUID, 2
    results = {}
    for name, datasets in (("single", [single]), ("pair", [first, second])):
        paths = [write(ds, src / f"{name}-{i}.dcm") for i, ds in enumerate(datasets)]
        (result,) = list(screen_inputs([InputFile(p.name, p, size=p.stat().st_size) for p in paths], options))
        results[name] = {"result": result.to_json(), "sources": paths}
    return {"out": out, **results}


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory, studies: dict[str, Any]) -> Iterator[OhifServer]:
    require(in_private_network_namespace(),
            "Orthanc and chromium reach past loopback: run the test inside `unshare -n` (see .ci/run)")
    require(shutil.which("Orthanc") is not None, "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    require(Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").is_file(),
            "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    require(Path(CHROMIUM).is_file(), "Debian's chromium is not installed at /usr/bin/chromium")
    dist = ohif_dist()
    require(dist is not None, "the OHIF viewer is not fetched: run scripts/fetch-ohif.sh (npm pack @ohif/app)")
    assert dist is not None
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True)
    server = None
    try:
        for name in ("single", "pair"):
            files = [*studies[name]["sources"],
                     *(studies["out"] / rel for rel in studies[name]["result"]["artifacts"]["dicom"])]
            for path in files:
                httpx.post(f"{orthanc.base}/instances", content=Path(path).read_bytes(), timeout=30).raise_for_status()
        server = OhifServer(dist, orthanc.base)
        yield server
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()


def _red_pixels(png: bytes) -> int:
    """Pixels a segment overlay colours (OHIF's first segment is red) in a viewport screenshot."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(np.count_nonzero((red > 140) & (red - green > 60) & (red - blue > 60)))


def _viewport(page: Any) -> bytes:
    """A screenshot of the largest canvas on the page: the image viewport (canvases come and go
    while a display set loads, so their boxes are read in the page at once)."""
    box = page.evaluate("""() => {
        let best = null;
        for (const c of document.querySelectorAll('canvas')) {
            const r = c.getBoundingClientRect();
            if (!best || r.width * r.height > best.width * best.height) {
                best = {x: r.x, y: r.y, width: r.width, height: r.height};
            }
        }
        return best;
    }""")
    assert box and box["width"] > 100, "no image viewport on the page"
    return bytes(page.screenshot(clip=box))


def _dismiss(page: Any, text: str) -> None:
    button = page.get_by_role("button", name=text)
    if button.count():
        button.first.click()


def _open(page: Any, label: str, index: int, timeout: float = 120.0, measurements: bool = True) -> None:
    """Double-click the ``index``-th study-browser entry named ``label``, as a user opens it, and wait
    until it is open: a SEG asks whether to open it (answered yes), an SR lists its measurements
    (an SR without ``measurements`` is given 10 s). Under software WebGL on a loaded 2-core machine the
    first SEG takes tens of seconds to fetch and decode, and a double-click that lands while the
    study browser re-renders is lost: so it is repeated every 30 s until the viewer answers."""
    entry = page.get_by_text(label).nth(index)
    entry.dblclick()
    start = last_click = time.monotonic()
    while time.monotonic() - start < timeout:
        if label == SEG_LABEL and page.get_by_text("Do you want to open this Segmentation?").count():
            _dismiss(page, "Yes")
            break
        if label == SR_LABEL and (page.get_by_text(" probability: ").count()
                                or not measurements and time.monotonic() - start > 10):
            break
        if time.monotonic() - last_click > 30:
            entry.dblclick()
            last_click = time.monotonic()
        time.sleep(0.5)
    else:
        raise AssertionError(f"OHIF did not open {label!r} #{index + 1} within {timeout:.0f} s")
    page.wait_for_timeout(3000)


def _overlay_drawn(page: Any, minimum: int, timeout: float = 60.0) -> int:
    """The overlay's coloured pixels in the viewport, once there are ``minimum`` (or at the timeout:
    loading a SEG and drawing it takes a few seconds under software WebGL)."""
    deadline = time.monotonic() + timeout
    count = _red_pixels(_viewport(page))
    while count < minimum and time.monotonic() < deadline:
        page.wait_for_timeout(1000)
        count = _red_pixels(_viewport(page))
    return count


def _expected_labels(result: dict[str, Any]) -> set[str]:
    return {f"{r['finding'].capitalize()} probability: {100 * r['score']:.2f} %" for r in result["regions"]}


def test_outputs_open_in_ohif_without_an_error(viewer: OhifServer, studies: dict[str, Any], tmp_path: Path,
                                               record_property: Any) -> None:
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    record_property("screenshots", str(shots))
    errors: list[str] = []
    pair, single = studies["pair"]["result"], studies["single"]["result"]
    assert len({r["sop_instance_uid"] for r in pair["regions"]}) == 2, "both child images are expected flagged"
    assert not single["regions"], "the adult phantom is expected negative (its SR has no region)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            # A radiologist who has seen OHIF's first-visit tour (its modal would cover the browser).
            page.add_init_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
            page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
            page.on("console", lambda m: errors.append(f"console: {m.text[:400]}")
                    if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url[:300]}") if r.status >= 400 else None)

            # The two-image study: both images' SEG and SR are listed, each opens and shows its own.
            page.goto(viewer.viewer_url(pair["study_instance_uid"]))
            page.get_by_text(SEG_LABEL).nth(1).wait_for(timeout=120_000)
            assert page.get_by_text(SEG_LABEL).count() == 2 and page.get_by_text(SR_LABEL).count() == 2
            page.wait_for_timeout(3000)
            baseline = _red_pixels(_viewport(page))
            page.screenshot(path=shots / "pair-study.png")
            overlays = []
            for i in range(2):
                _open(page, SEG_LABEL, i)
                overlays.append(_overlay_drawn(page, 500 + 10 * baseline))
                page.screenshot(path=shots / f"pair-seg-{i + 1}.png")
            # Each image's flagged regions are drawn over it (hundreds of pixels on a 640 x 560 image
            # shown at about 900 px); the plain image has next to none.
            assert all(count > 500 + 10 * baseline for count in overlays), (baseline, overlays)
            seen: set[str] = set()
            for i in range(2):
                _open(page, SR_LABEL, i)
                page.screenshot(path=shots / f"pair-sr-{i + 1}.png")
                text = page.inner_text("body")
                seen |= {label for label in _expected_labels(pair) if label in text}
            # Every region of both images, named by finding, with its own probability in percent.
            assert seen == _expected_labels(pair), (seen, _expected_labels(pair))
            assert "Probability of finding" not in page.inner_text("body")

            # The one-image negative study: its SR (no region) and SEG (empty) open without an error.
            page.goto(viewer.viewer_url(single["study_instance_uid"]))
            page.get_by_text(SR_LABEL).first.wait_for(timeout=120_000)
            _open(page, SEG_LABEL, 0)
            page.screenshot(path=shots / "single-seg.png")
            assert _red_pixels(_viewport(page)) <= 10 * max(baseline, 10)
            _open(page, SR_LABEL, 0, measurements=False)
            page.screenshot(path=shots / "single-sr.png")
        finally:
            browser.close()
    assert not errors, errors
