"""Several replicas, one store, one bucket, as an operator runs them on Kubernetes: real
``secondreader serve`` processes as pods (each in mount, UTS and PID namespaces of its own, with
its own home folder bind-mounted at the same path and its own hostname), a throwaway PostgreSQL
database, a real S3 server (SeaweedFS) and a counting C-STORE SCP as the PACS, all on loopback in
the test's network namespace.

Studies arrive by C-STORE at one pod, split across two pods, and by HTTP. One pod is killed
(SIGKILL of its PID namespace) while it screens; a replacement with a new home and hostname
starts. Then: every acknowledged study has exactly one current result holding all its instances;
no job is left queued or running; every output reaches the PACS once, except re-sends of the same
SOP Instance UID for the killed pod's in-flight work; a dead-lettered row does not hold the others
back. The scenario's duration and C-STOREs per output are written to stderr (run with ``-s``).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE
from sqlalchemy import create_engine, select, text

from secondreader.service.storage import S3Storage
from secondreader.store import Store
from secondreader.store.models import Job, Outbox

from ..conftest import require
from ..factories import make_cxr_dataset, to_bytes
from ..pacs import Pacs
from ..readiness import wait_until_ready
from ..s3server import BUCKET, SeaweedS3, free_port
from .conftest import PG_URL, postgres_store

pytestmark = [pytest.mark.weights, pytest.mark.slow]

KEY = "replicas-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LEASE = 6.0


class Pod:
    """One replica: ``secondreader serve`` in namespaces of its own (mount, UTS, PID)."""

    def __init__(self, name: str, root: Path, home: Path, env: dict[str, str]) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.http_port, self.dicom_port, self.hl7_port = free_port(), free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.log = self.dir.parent / f"{name}.log"
        pod_env = {**env, "SECONDREADER_HOME": str(home), "SECONDREADER_DICOM_PORT": str(self.dicom_port),
                   "SECONDREADER_HL7_PORT": str(self.hl7_port), "POD_DIR": str(self.dir), "POD_HOME": str(home),
                   "POD_NAME": name, "POD_PYTHON": sys.executable, "POD_PORT": str(self.http_port)}
        script = ('mount --bind "$POD_DIR" "$POD_HOME" && hostname "$POD_NAME" && '
                  'exec "$POD_PYTHON" -m secondreader.cli serve --port "$POD_PORT" --no-samples')
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "--", "sh", "-c", script],
                env=pod_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 240) -> None:
        wait_until_ready(self.base, timeout=timeout, stopped=lambda: None if self.process.poll() is None else
                         f"{self.name} exited with {self.process.returncode}: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: the pod's PID namespace ends with its first process, everything in it too."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def _send(port: int, datasets: list[pydicom.Dataset]) -> list[int]:
    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SECONDREADER")
    assert assoc.is_established, "association refused"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _digest(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


@pytest.fixture()
def database() -> Iterator[str]:
    """An empty PostgreSQL database of its own (the pods' first starts migrate it together)."""
    postgres_store()
    name = f"replicas_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"create database {name}"))
    base, _, _db = PG_URL.rpartition("/")
    yield f"{base}/{name}"
    with admin.connect() as c:
        c.execute(text(f"drop database {name} with (force)"))
    admin.dispose()


def test_replicas_lose_nothing_acknowledged_and_deliver_each_output_once(
        tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require(shutil.which("unshare") is not None and os.geteuid() == 0,
            "the pods need unshare (util-linux) as root for their mount and PID namespaces")
    started = time.monotonic()
    s3 = SeaweedS3(tmp_path / "seaweed")
    for key, value in s3.env().items():  # this process reads the bucket too
        monkeypatch.setenv(key, value)
    pacs = Pacs(max_associations=32)
    prefix = f"replicas-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"  # every pod's home is here, each pod's own folder bind-mounted over it
    home.mkdir()
    env = {**os.environ, **s3.env(), "SECONDREADER_DATABASE_URL": database, "SECONDREADER_API_KEYS": KEY,
           "SECONDREADER_STORAGE_URL": f"s3://{BUCKET}/{prefix}", "SECONDREADER_STUDY_STABLE_SECONDS": "1",
           "SECONDREADER_PACS_DESTINATION": f"PACS@127.0.0.1:{pacs.port}", "SECONDREADER_LEASE_SECONDS": str(LEASE),
           "SECONDREADER_POLL_SECONDS": "0.5", "SECONDREADER_SCREEN_WORKERS": "2", "SECONDREADER_ENCODE_WORKERS": "1"}
    env.pop("SECONDREADER_SECRET", None)
    env.pop("BENTOML_HOME", None)  # each pod's model store in its own home
    store = Store(database)
    pods: dict[str, Pod] = {}
    try:
        # -- three first starts together on an empty database ------------------------------------
        for name in ("pod-a", "pod-b", "pod-c"):
            pods[name] = Pod(name, tmp_path / "pods", home, env)
        for pod in pods.values():
            pod.wait_ready()
        a, b, c = pods["pod-a"], pods["pod-b"], pods["pod-c"]
        with store.engine.connect() as conn:
            assert conn.execute(text("select count(*) from shared_settings")).scalar() == 1  # one pseudonym key

        # -- a row whose file is gone for good, ahead of everything else -------------------------
        dead_ref = f"s3://{BUCKET}/{prefix}/artifacts/1.2.999/gone.dcm"
        store.enqueue_outbox("1.2.999", [dead_ref], f"PACS@127.0.0.1:{pacs.port}")

        # -- studies arrive: 12 at pod A only, 2 split over B and C, 2 by HTTP at B ----------------
        sent: dict[str, set[str]] = {}
        at_a = [make_cxr_dataset(400, 400, lesion_at=(150 + 10 * i, 200)) for i in range(12)]
        assert _send(a.dicom_port, at_a) == [0] * 12
        for ds in at_a:
            sent[str(ds.StudyInstanceUID)] = {str(ds.SOPInstanceUID)}
        for _ in range(2):
            first = make_cxr_dataset(400, 400)
            second = make_cxr_dataset(400, 400, study_uid=str(first.StudyInstanceUID))
            assert _send(b.dicom_port, [first]) == [0] and _send(c.dicom_port, [second]) == [0]
            sent[str(first.StudyInstanceUID)] = {str(first.SOPInstanceUID), str(second.SOPInstanceUID)}
        http_jobs = []
        for _ in range(2):
            ds = make_cxr_dataset(400, 400)
            answer = httpx.post(f"{b.base}/v1/screen?wait=0", content=to_bytes(ds), timeout=60,
                                headers={**AUTH, "Content-Type": "application/dicom"})
            assert answer.status_code in (200, 202), answer.text
            if answer.status_code == 202:
                http_jobs.append(answer.json()["job_id"])
            sent[str(ds.StudyInstanceUID)] = {str(ds.SOPInstanceUID)}

        # -- pod A is killed while it screens; a replacement starts --------------------------------
        def running_on_a() -> list[Job]:
            with store.transaction("jobs on pod A") as s:
                return list(s.scalars(select(Job).where(Job.status == "running", Job.claimed_by == "pod-a")))

        _wait(running_on_a, 120, "pod A to run a job")
        a.kill()
        digests = {_digest(uid): uid for uid in sent}
        with store.transaction("pod A's work at its death") as s:
            in_flight_jobs = list(s.scalars(select(Job).where(Job.status == "running", Job.claimed_by == "pod-a")))
            claimed_rows = list(s.scalars(select(Outbox).where(Outbox.claimed_by == "pod-a",
                                                               Outbox.status == "pending")))
        in_flight = {digests[j.spool_dir.rstrip("/").rsplit("/", 1)[-1]] for j in in_flight_jobs
                     if j.spool_dir.rstrip("/").rsplit("/", 1)[-1] in digests}
        in_flight |= {uid for j in in_flight_jobs for uid in (j.study_uids or [])}
        in_flight |= {row.study_instance_uid for row in claimed_rows}
        assert in_flight_jobs, "pod A held no job when it was killed"
        pods["pod-d"] = Pod("pod-d", tmp_path / "pods", home, env)
        pods["pod-d"].wait_ready()

        # -- everything acknowledged is screened once, with all its instances ---------------------
        def all_screened() -> bool:
            for uid, sops in sent.items():
                study = store.get_study(uid)
                if study is None or {i["sop_instance_uid"] for i in study["instances"]} != sops:
                    return False
            return True

        def settled() -> bool:
            counts = store.outbox_counts()
            return all_screened() and store.job_counts() == {} and counts.get("pending", 0) == 0

        _wait(settled, 600, "every study screened, every job finished and every output delivered")
        for uid, sops in sent.items():
            study = store.get_study(uid)
            assert study is not None and study["status"] == "screened", uid
            assert {i["sop_instance_uid"] for i in study["instances"]} == sops
        for job_id in http_jobs:  # the same answer on every live pod
            views = [httpx.get(f"{p.base}/v1/jobs/{job_id}", headers=AUTH, timeout=30).json()
                     for n, p in pods.items() if n != "pod-a"]
            assert {v["status"] for v in views} == {"done"}

        # -- every output reached the PACS once (re-sends only for pod A's in-flight work) ---------
        counts = store.outbox_counts()
        assert counts.get("dead") == 1 and counts.get("sent", 0) > 0
        storage = S3Storage(f"s3://{BUCKET}/{prefix}", endpoint_url=s3.endpoint)
        with store.transaction("sent rows") as s:
            sent_rows = list(s.scalars(select(Outbox).where(Outbox.status == "sent")))
        outputs: dict[str, str] = {}
        for row in sent_rows:
            ds = pydicom.dcmread(io.BytesIO(storage.read(row.path)), stop_before_pixels=True)
            outputs[str(ds.SOPInstanceUID)] = row.study_instance_uid
        assert set(pacs.stores()) == set(outputs), "the PACS got exactly the outputs the outbox sent"
        resent = {sop: n for sop, n in pacs.stores().items() if n > 1}
        assert all(outputs[sop] in in_flight for sop in resent), "only pod A's in-flight work is sent twice"
        assert set(outputs.values()) == set(sent)  # every study's outputs

        # -- the dead letter: counted, listed on any pod, delivery went around it ------------------
        metrics = httpx.get(f"{pods['pod-d'].base}/metrics", timeout=30).text
        assert 'secondreader_outbox_rows{status="dead"} 1.0' in metrics
        dead = httpx.get(f"{c.base}/v1/admin/outbox?status=dead", headers=AUTH, timeout=30).json()
        assert [item["object"] for item in dead["items"]] == ["gone.dcm"] and "gone" in dead["items"][0]["reason"]

        # -- any pod serves any heatmap and source image ------------------------------------------
        uid = next(iter(sent))
        study = store.get_study(uid)
        assert study is not None
        heatmap = study["artifacts"]["heatmaps"][0]
        sop = study["instances"][0]["sop_instance_uid"]
        for name, pod in pods.items():
            if name == "pod-a":
                continue
            study_part, sop_part, finding_png = heatmap.split("/")
            png = httpx.get(f"{pod.base}/v1/studies/{study_part}/instances/{sop_part}/heatmaps/{finding_png}",
                            headers=AUTH, timeout=60)
            assert png.status_code == 200, (name, png.text)
            source = httpx.get(f"{pod.base}/v1/studies/{uid}/instances/{sop}/dicom", headers=AUTH, timeout=60)
            assert source.status_code == 200 and source.content[128:132] == b"DICM"

        took = time.monotonic() - started
        total = sum(pacs.stores().values())
        sys.stderr.write(
            f"\nreplica scenario: {len(sent)} studies ({sum(map(len, sent.values()))} instances), "
            f"{len(outputs)} outputs, {total} C-STOREs ({total / len(outputs):.3f} per output; "
            f"{len(resent)} re-sent, all of pod A's in-flight studies), pod A killed holding "
            f"{len(in_flight_jobs)} job(s); {took:.0f} s in all\n")
    finally:
        for pod in pods.values():
            pod.stop()
        store.engine.dispose()
        pacs.stop()
        s3.stop()
