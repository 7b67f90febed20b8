"""The DICOM receiver over real DICOM networking on loopback: pynetdicom SCUs send, a pynetdicom SCP
stands in for the PACS that receives the results (the Orthanc round trip is in test_orthanc.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from secondreader.dicom.scp import Receiver, start_receiver
from secondreader.dicom.status import OUT_OF_RESOURCES
from secondreader.service.core import ScreeningService
from secondreader.store import Store

from ..factories import make_cxr_dataset
from ..pacs import Pacs

pytestmark = [pytest.mark.weights, pytest.mark.slow]


def _send(port: int, datasets: list[pydicom.Dataset], calling: str = "MODALITY") -> list[int]:
    ae = AE(ae_title=calling)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SECONDREADER")
    assert assoc.is_established, "association refused"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _wait(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def pacs() -> Iterator[Pacs]:
    p = Pacs()
    yield p
    p.stop()


@pytest.fixture
def running(tmp_path: Path, pneumonia_predictor, pacs: Pacs) -> Iterator[tuple[ScreeningService, Receiver]]:  # type: ignore[no-untyped-def]
    store = Store(f"sqlite:///{tmp_path / 'sr.db'}")
    store.migrate()
    core = ScreeningService(store, [pneumonia_predictor], home=tmp_path, max_image_pixels=64_000_000,
                            pacs_destination=f"PACS@127.0.0.1:{pacs.port}")
    core.start_background(stable_seconds=0.5, interval=0.1)
    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", ["MODALITY", "ORTHANC"], core.receive)
    yield core, receiver
    receiver.stop()
    core.close()


def test_echo_and_allow_list(running) -> None:  # type: ignore[no-untyped-def]
    _, receiver = running
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="SECONDREADER")
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()
    stranger = AE(ae_title="STRANGER")
    stranger.add_requested_context(Verification)
    refused = stranger.associate("127.0.0.1", receiver.port, ae_title="SECONDREADER")
    assert refused.is_rejected


def test_study_is_screened_once_stable_and_results_reach_the_pacs(running, pacs: Pacs) -> None:  # type: ignore[no-untyped-def]
    core, receiver = running
    chest = make_cxr_dataset(512, 512, lesion_at=(200, 180))
    lateral = make_cxr_dataset(512, 512, study_uid=chest.StudyInstanceUID, view_position="LL")
    assert _send(receiver.port, [chest, lateral]) == [0, 0]
    _wait(lambda: core.store.get_study(chest.StudyInstanceUID) is not None)
    result = core.store.get_study(chest.StudyInstanceUID)
    assert result is not None and result["status"] == "screened" and len(result["instances"]) == 2
    _wait(lambda: len(pacs.received) == 3)
    kinds = sorted(str(ds.SOPClassUID) for ds in pacs.received)
    assert kinds == sorted(["1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.66.4",
                            "1.2.840.10008.5.1.4.1.1.88.34"])
    assert all(ds.StudyInstanceUID == chest.StudyInstanceUID for ds in pacs.received)

    # The same study again, and our own results coming back from the PACS: no second screening.
    assert _send(receiver.port, [chest]) == [0]
    own = [ds for ds in pacs.received if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"]
    own[0].file_meta = pydicom.dataset.FileMetaDataset()
    own[0].file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    assert _send(receiver.port, own) == [0]
    time.sleep(1.5)
    assert core.store.results_count(chest.StudyInstanceUID) == 1
    assert len(pacs.received) == 3


# pynetdicom's association threads leave the refused sockets to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_pacs_down_then_up_delivers_everything(tmp_path: Path, pneumonia_predictor) -> None:  # type: ignore[no-untyped-def]
    pacs = Pacs()
    port = pacs.port
    pacs.stop()  # the destination is down
    store = Store(f"sqlite:///{tmp_path / 'sr.db'}")
    store.migrate()
    core = ScreeningService(store, [pneumonia_predictor], home=tmp_path, max_image_pixels=64_000_000,
                            pacs_destination=f"PACS@127.0.0.1:{port}")
    core.start_background(stable_seconds=0.3, interval=0.1)
    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", ["*"], core.receive)
    try:
        chest = make_cxr_dataset(400, 400)
        assert _send(receiver.port, [chest]) == [0]
        _wait(lambda: store.outbox_counts().get("pending", 0) == 3)
        time.sleep(1.0)
        assert store.outbox_counts() == {"pending": 3}
        back = Pacs(port)  # the PACS comes back on the same port
        try:
            _wait(lambda: store.outbox_counts() == {"sent": 3}, timeout=90)
            assert len(back.received) == 3
        finally:
            back.stop()
    finally:
        receiver.stop()
        core.close()


def test_store_failure_answers_out_of_resources(tmp_path: Path, pneumonia_predictor) -> None:  # type: ignore[no-untyped-def]
    broken = Store("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1")
    core = ScreeningService(broken, [pneumonia_predictor], home=tmp_path, max_image_pixels=64_000_000)
    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", ["*"], core.receive)
    try:
        assert _send(receiver.port, [make_cxr_dataset(300, 300)]) == [OUT_OF_RESOURCES]
    finally:
        receiver.stop()
        core.close()
        broken.engine.dispose()


def test_an_oversized_data_set_aborts_its_association_before_it_is_all_received(
        tmp_path: Path, pneumonia_predictor, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    store = Store(f"sqlite:///{tmp_path / 'sr.db'}")
    store.migrate()
    core = ScreeningService(store, [pneumonia_predictor], home=tmp_path, max_image_pixels=64_000_000)
    limit = 256 * 1024
    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", ["*"], core.receive, max_dataset_bytes=limit)
    big, small = make_cxr_dataset(1024, 1024), make_cxr_dataset(256, 256)  # 2 MiB and 128 KiB of pixels
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(big.SOPClassUID, big.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="SECONDREADER")
        assert assoc.is_established
        with caplog.at_level("WARNING", logger="secondreader.dicom.scp"):
            answer = assoc.send_c_store(big)
            _wait(lambda: assoc.is_aborted, 30)
        assert "Status" not in answer  # no DIMSE answer: the association was aborted
        assert caplog.text.count("passed the 0.25 MiB limit; association aborted") == 1
        # the receiver lives on, and the limit is per data set: two instances under it on one
        # association (together over it) are both stored; the big one never was
        other = make_cxr_dataset(256, 256, study_uid=small.StudyInstanceUID)
        assert _send(receiver.port, [small, other]) == [0, 0]
        assert [uid for uid, _spool in store.stable_studies(0)] == [small.StudyInstanceUID]
        assert "passed the" not in caplog.text.split("association aborted", 1)[1]
    finally:
        receiver.stop()
        core.close()
