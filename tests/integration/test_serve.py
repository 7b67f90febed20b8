"""``secondreader serve`` as a user starts it: a subprocess on a free loopback port, real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ..conftest import CANARY_NAME
from ..factories import make_cxr_dataset, to_bytes
from ..readiness import free_port, wait_until_ready

pytestmark = [pytest.mark.weights, pytest.mark.slow]

KEY = "serve-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("serve-home")
    log = home / "server.log"
    port = free_port()
    env = {**os.environ, "SECONDREADER_HOME": str(home), "SECONDREADER_API_KEYS": KEY,
           "SECONDREADER_DICOM_PORT": "0", "SECONDREADER_STUDY_STABLE_SECONDS": "1",
           "SECONDREADER_HL7_PORT": str(HL7_PORT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "secondreader.cli", "serve", "--port", str(port),
                                 "--no-samples"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, timeout=120, stopped=lambda: None if proc.poll() is None else
                         f"serve exited with {proc.returncode}: {log.read_text()[-3000:]}")
        yield base, log
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def test_health_and_metrics_are_open_the_rest_needs_a_key(server: tuple[str, Path]) -> None:
    base, _ = server
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.get(f"{base}/livez").status_code == 200
    metrics = httpx.get(f"{base}/metrics")
    assert metrics.status_code == 200 and "secondreader_model_info" in metrics.text
    response = httpx.post(f"{base}/v1/screen", content=b"x", headers={"Content-Type": "application/dicom"})
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"


def test_sixteen_concurrent_uploads_are_all_answered(server: tuple[str, Path]) -> None:
    base, log = server
    bodies = [to_bytes(make_cxr_dataset(512, 512, lesion_at=(200 + i * 5, 300))) for i in range(16)]
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/dicom"}

    def upload(body: bytes) -> httpx.Response:
        return httpx.post(f"{base}/v1/screen?wait=120", content=body, headers=headers, timeout=180)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(upload, bodies))
    codes = [r.status_code for r in responses]
    assert codes == [200] * 16, codes
    uids = {r.json()["studies"][0]["study_instance_uid"] for r in responses}
    assert len(uids) == 16
    stored = httpx.get(f"{base}/v1/studies/{uids.pop()}", headers={"Authorization": f"Bearer {KEY}"})
    assert stored.status_code == 200 and stored.json()["status"] == "screened"
    metrics = httpx.get(f"{base}/metrics").text
    assert 'secondreader_studies_total{status="screened"}' in metrics
    text = log.read_text()
    assert CANARY_NAME not in text and "CANARY" not in text
    assert "/v1/studies/1." not in text, "request paths with UIDs must not reach the log"


def test_bad_input_over_real_http_is_a_4xx(server: tuple[str, Path]) -> None:
    base, _ = server
    headers = {"Authorization": f"Bearer {KEY}"}
    not_dicom = httpx.post(f"{base}/v1/screen", content=b"plain text",
                           headers={**headers, "Content-Type": "application/dicom"})
    assert not_dicom.status_code == 400 and "nothing in the upload is DICOM" in not_dicom.json()["reason"]


def test_refuses_a_public_interface_without_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SECONDREADER_API_KEYS"}
    env["SECONDREADER_HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "secondreader.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "without API keys" in proc.stderr


def test_stow_rs_with_a_dicomweb_client(server: tuple[str, Path]) -> None:
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session

    base, _ = server
    chest = make_cxr_dataset(400, 400)
    with create_session() as session:  # closed after: its sockets would leak into a later test's GC
        client = DICOMwebClient(url=f"{base}/v1/dicomweb", headers={"Authorization": f"Bearer {KEY}"},
                                session=session)
        answer = client.store_instances([chest])
    (referenced,) = answer.ReferencedSOPSequence
    assert referenced.ReferencedSOPInstanceUID == chest.SOPInstanceUID
    headers = {"Authorization": f"Bearer {KEY}"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = httpx.get(f"{base}/v1/studies/{chest.StudyInstanceUID}", headers=headers)
        if found.status_code == 200:
            break
        time.sleep(0.5)
    assert found.status_code == 200 and found.json()["status"] == "screened"


HL7_PORT = free_port()


def _mllp(message: str) -> str:
    """Send one message over MLLP to the service's HL7 listener; the acknowledgement's text."""
    with socket.create_connection(("127.0.0.1", HL7_PORT), timeout=30) as sock:
        sock.sendall(b"\x0b" + message.encode() + b"\x1c\r")
        reply = b""
        while not reply.endswith(b"\x1c\r"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.strip(b"\x0b\x1c\r").decode()


def test_hl7_first_read_over_mllp_routes_the_study(server: tuple[str, Path]) -> None:
    base, log = server
    headers = {"Authorization": f"Bearer {KEY}"}
    chest = make_cxr_dataset(512, 512, lesion_at=(250, 300))
    chest.AccessionNumber = "HL7ACC001"
    screened = httpx.post(f"{base}/v1/screen?wait=120", content=to_bytes(chest),
                          headers={**headers, "Content-Type": "application/dicom"}, timeout=180)
    assert screened.status_code == 200
    uid = chest.StudyInstanceUID
    # Segments split by \n (as many interface engines write files): normalised before parsing.
    oru = "\n".join([
        "MSH|^~\\&|RIS|HOSP|SECONDREADER|HOSP|20261128101500||ORU^R01|CTRL0001|P|2.5",
        f"PID|1||PID123^^^HOSP||{CANARY_NAME}||19700101|F",
        "OBR|1||HL7ACC001|71046^XR CHEST 2 VIEWS^CPT|||20261128100000|||||||||||HL7ACC001",
        "OBX|1|TX|18782-3^Radiology Study observation^LN||No focal consolidation. Heart size normal.||||||F",
    ])
    reply = _mllp(oru)
    assert "MSA|AA|CTRL0001" in reply, reply
    study = httpx.get(f"{base}/v1/studies/{uid}", headers=headers).json()
    assert study["first_read"]["status"] == "negative"
    assert study["first_read"]["labels"]["pneumonia"] == "negated"
    assert study["first_read"]["source"] == "hl7"
    # a message that is not a result is rejected with a reason, and the listener goes on
    adt = "MSH|^~\\&|RIS|HOSP|SR|HOSP|20261128||ADT^A01|CTRL0002|P|2.5\rPID|1||X||" + CANARY_NAME
    assert "MSA|AR|CTRL0002|HL7 message type (MSH-9) is not a result" in _mllp(adt)  # the type is not quoted
    assert "MSA|AA|CTRL0001" in _mllp(oru)
    items = httpx.get(f"{base}/v1/worklist", headers=headers).json()["items"]
    assert uid in {i["study_instance_uid"] for i in items}
    assert CANARY_NAME not in log.read_text() and "CANARY" not in log.read_text()
