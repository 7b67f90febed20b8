"""A real PACS round trip: storescu → Orthanc → (Lua OnStableStudy) → secondreader's receiver →
screening → SC, SEG and SR back into the same study in Orthanc. Runs only inside a private network
namespace (Orthanc 1.10 listens on every interface); CI runs the suite in one."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from secondreader.dicom.scp import Receiver, start_receiver
from secondreader.service.core import ScreeningService
from secondreader.store import Store

from ..conftest import ROOT, require
from ..orthanc import Orthanc, in_private_network_namespace

pytestmark = [pytest.mark.weights, pytest.mark.slow, pytest.mark.shared_data]

STABLE_SECONDS = 1.0
# dcmtk's storescu (pynetdicom installs a storescu of its own into the virtual environment)
DCMTK_STORESCU = "/usr/bin/storescu"
Stack = tuple[Orthanc, ScreeningService, Receiver, list[float]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, adult_pneumonia_predictor) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    require(shutil.which("Orthanc") is not None, "Orthanc is not installed (Debian package orthanc)")
    require(Path(DCMTK_STORESCU).is_file(), "dcmtk's storescu is not installed (Debian package dcmtk)")
    require(in_private_network_namespace(),
            "Orthanc listens on all interfaces: run the suite inside `unshare -n` (see .ci/run)")
    home = tmp_path_factory.mktemp("sr-home")
    store = Store(f"sqlite:///{home / 'sr.db'}")
    store.migrate()
    received_at: list[float] = []
    core_holder: list[ScreeningService] = []

    def receive(data: bytes, ds: pydicom.Dataset, calling: str) -> bool:
        received_at.append(time.monotonic())
        return core_holder[0].receive(data, ds, calling)

    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", ["ORTHANC"], receive)
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"),
                      modalities={"secondreader": ["SECONDREADER", "127.0.0.1", receiver.port]},
                      lua_scripts=[ROOT / "serving" / "orthanc" / "forward-to-secondreader.lua"])
    core = ScreeningService(store, [adult_pneumonia_predictor], home=home, max_image_pixels=64_000_000,
                            pacs_destination=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    core_holder.append(core)
    core.start_background(stable_seconds=STABLE_SECONDS, interval=0.05)
    yield orthanc, core, receiver, received_at
    receiver.stop()
    core.close()
    orthanc.stop()


def _instances(orthanc: Orthanc) -> list[dict]:  # type: ignore[type-arg]
    return [orthanc.get(f"/instances/{i}/simplified-tags") | {"id": i} for i in orthanc.get("/instances")]


def _wait_for(orthanc: Orthanc, count: int, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(orthanc.get("/instances")) >= count:
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"Orthanc did not reach {count} instances; log: "
                         + (orthanc.folder / "orthanc.log").read_text()[-1500:])


def test_round_trip_results_land_in_the_same_study(stack, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    orthanc, core, receiver, received_at = stack
    source = shared_data / "cxr" / "siim-cr-chest-pa-monochrome1.dcm"
    subprocess.run([DCMTK_STORESCU, "-aet", "MODALITY", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port),
                    str(source)], check=True, capture_output=True, timeout=60)
    done = _wait_for(orthanc, 4)
    latency = done - received_at[-1] - STABLE_SECONDS
    print(f"\nlast instance at secondreader -> results stored in Orthanc, minus stable time: {latency:.2f} s")
    instances = _instances(orthanc)
    original = pydicom.dcmread(source, stop_before_pixels=True)
    assert {i["StudyInstanceUID"] for i in instances} == {original.StudyInstanceUID}
    ours = {i["SOPClassUID"]: i for i in instances if i.get("Manufacturer") == "secondreader"}
    assert set(ours) == {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"}

    result = core.store.get_study(original.StudyInstanceUID)
    assert result is not None and result["status"] == "screened"
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(
        orthanc.get(f"/instances/{ours['1.2.840.10008.5.1.4.1.1.66.4']['id']}/file"))))
    heat_png = core.artifacts / result["artifacts"]["heatmaps"][0]
    assert heat_png.is_file()
    frames = seg.pixel_array
    assert frames.shape[-2:] == (original.Rows, original.Columns) and np.isfinite(frames).all()
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(
        orthanc.get(f"/instances/{ours['1.2.840.10008.5.1.4.1.1.88.34']['id']}/file"))))
    rois = sr.content.get_planar_roi_measurement_groups()
    assert len(rois) == len(result["regions"])
    for roi, region in zip(rois, result["regions"], strict=True):
        graphic = roi.roi.value if hasattr(roi.roi, "value") else roi.roi.GraphicData
        points = np.asarray(graphic, dtype=float).reshape(-1, 2)
        r0, c0, r1, c1 = region["bbox"]
        assert points[:, 0].min() == c0 and points[:, 1].min() == r0
        assert points[:, 0].max() == c1 and points[:, 1].max() == r1


def test_resending_the_study_makes_no_duplicates(stack) -> None:  # type: ignore[no-untyped-def]
    orthanc, core, *_ = stack
    before = sorted(orthanc.get("/instances"))
    study_id = orthanc.get("/studies")[0]
    import httpx

    httpx.post(f"{orthanc.base}/modalities/secondreader/store", content=study_id, timeout=60).raise_for_status()
    time.sleep(STABLE_SECONDS + 3)
    assert sorted(orthanc.get("/instances")) == before
    result = core.store.get_study(_instances(orthanc)[0]["StudyInstanceUID"])
    assert result is not None and core.store.results_count(result["study_instance_uid"]) == 1


def test_results_by_stow_rs_to_orthanc_dicomweb(tmp_path_factory: pytest.TempPathFactory, pneumonia_predictor) -> None:  # type: ignore[no-untyped-def]
    require(shutil.which("Orthanc") is not None, "Orthanc is not installed (Debian package orthanc)")
    require(Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").is_file(),
            "the Orthanc DICOMweb plugin is not installed (Debian package orthanc-dicomweb)")
    require(in_private_network_namespace(),
            "Orthanc listens on all interfaces: run the suite inside `unshare -n` (see .ci/run)")
    from secondreader.service.core import Upload

    from ..factories import make_cxr_dataset, to_bytes

    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc-web"), dicomweb=True)
    home = tmp_path_factory.mktemp("sr-web")
    store = Store(f"sqlite:///{home / 'sr.db'}")
    store.migrate()
    core = ScreeningService(store, [pneumonia_predictor], home=home, max_image_pixels=64_000_000,
                            pacs_destination=f"{orthanc.base}/dicom-web")
    core.start_background(stable_seconds=0.5, interval=0.1)
    try:
        chest = make_cxr_dataset(400, 400)
        job = core.submit([Upload("chest.dcm", to_bytes(chest))])
        assert core.wait(job, 60).status == "done"  # type: ignore[union-attr]
        _wait_for(orthanc, 3)
        stored = _instances(orthanc)
        assert {i["Manufacturer"] for i in stored} == {"secondreader"}
        assert {i["StudyInstanceUID"] for i in stored} == {chest.StudyInstanceUID}
        assert store.outbox_counts() == {"sent": 3}
    finally:
        core.close()
        orthanc.stop()
