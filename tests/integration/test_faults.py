"""Faults: the service killed (-9) mid-stream, the PACS destination down, the store down.

- ``secondreader serve`` (the real command, a subprocess) is killed with SIGKILL while studies are
  being received over DICOM and screened, then started again: every instance it acknowledged is
  screened and its results delivered at least once, and because output UIDs are deterministic the
  receiving PACS (a pynetdicom Storage SCP of the test's own) ends with exactly one copy of each.
- The PACS is down while studies are screened, then comes back: everything is delivered, once
  each (a failed object delays itself, never the others: the order among them may change).
- A PostgreSQL cluster of the test's own (another port) is stopped while the receiver runs: C-STORE
  answers Out of Resources (0xA7xx), never Success; when it is back the receiver and the service
  recover and every acknowledged study is screened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE
from sqlalchemy import select

from secondreader.dicom.scp import start_receiver
from secondreader.service.core import ScreeningService
from secondreader.store import Store

from ..conftest import require
from ..factories import make_cxr_dataset
from ..pacs import Pacs
from ..readiness import free_port, wait_until_ready

pytestmark = [pytest.mark.weights, pytest.mark.slow]

KEY = "faults-key"
OUTPUT_CLASSES = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"}


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (from /proc), deepest first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found[::-1]


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"not in {timeout:.0f} s: {what}")


def _store_one(port: int, ds: pydicom.Dataset) -> int | None:
    """C-STORE one instance on its own association: the status, or None when there was no answer."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SECONDREADER")
    if not assoc.is_established:
        return None
    try:
        answer = assoc.send_c_store(ds)
        return int(answer.Status) if "Status" in answer else None
    except (OSError, RuntimeError, ValueError):
        return None
    finally:
        if assoc.is_established:
            assoc.release()


# -- kill -9 ------------------------------------------------------------------------------------
class Serve:
    """``secondreader serve`` as a subprocess in its own process group (so -9 reaches every worker)."""

    def __init__(self, home: Path, http_port: int, dicom_port: int, pacs_port: int) -> None:
        self.home, self.base = home, f"http://127.0.0.1:{http_port}"
        self.http_port = http_port
        self.env = {**os.environ, "SECONDREADER_HOME": str(home), "SECONDREADER_API_KEYS": KEY,
                    "SECONDREADER_DICOM_PORT": str(dicom_port), "SECONDREADER_STUDY_STABLE_SECONDS": "1",
                    "SECONDREADER_PACS_DESTINATION": f"PACS@127.0.0.1:{pacs_port}",
                    "SECONDREADER_HL7_PORT": str(free_port())}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "serve.log"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "secondreader.cli", "serve", "--port",
                                          str(self.http_port), "--no-samples"], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.proc
        wait_until_ready(self.base, timeout=180, stopped=lambda: None if proc.poll() is None else
                         f"serve exited with {proc.returncode}: {self.log.read_text()[-3000:]}")

    def kill(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # BentoML starts its workers in sessions of their own: signal them by name as well,
            # or a SIGKILLed arbiter leaves a worker running that still holds the ports.
            for pid in _descendants(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def study(self, uid: str) -> dict | None:  # type: ignore[type-arg]
        try:
            response = httpx.get(f"{self.base}/v1/studies/{uid}", headers={"Authorization": f"Bearer {KEY}"},
                                 timeout=10)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None


@pytest.fixture
def pacs() -> Iterator[Pacs]:
    p = Pacs()
    yield p
    p.stop()


def test_kill_9_while_receiving_and_screening_loses_nothing_and_duplicates_nothing(tmp_path: Path,
                                                                                   pacs: Pacs) -> None:
    dicom_port = free_port()
    serve = Serve(tmp_path / "home", free_port(), dicom_port, pacs.port)
    studies = [make_cxr_dataset(512, 512, lesion_at=(150 + 10 * i, 250)) for i in range(12)]
    acknowledged: list[pydicom.Dataset] = []
    unanswered: list[pydicom.Dataset] = []
    serve.start()
    try:
        killed = False
        for index, ds in enumerate(studies):
            status = None if killed else _store_one(dicom_port, ds)
            (acknowledged if status == 0 else unanswered).append(ds)
            assert status in (0, None), f"unexpected C-STORE status {status}"
            if index == 6:
                # Some studies are screened or being screened, some delivered, some still arriving.
                time.sleep(1.5)
                serve.kill(signal.SIGKILL)
                killed = True
            time.sleep(0.3)
        assert len(acknowledged) >= 5, "the service should have acknowledged the first studies"
        serve.start()
        for ds in unanswered:  # the modality sends again what was never acknowledged
            assert _store_one(dicom_port, ds) == 0
            acknowledged.append(ds)
        uids = {str(ds.StudyInstanceUID) for ds in acknowledged}
        _wait(lambda: all((r := serve.study(u)) is not None and r["status"] == "screened" for u in uids), 240,
              "every acknowledged study screened")
        _wait(lambda: len(pacs.distinct()) == 3 * len(uids), 240, "three results per study at the PACS")
        time.sleep(2.0)  # nothing more trickles in
        distinct = pacs.distinct()
        assert len(distinct) == 3 * len(uids), "exactly one copy of each result (deterministic UIDs)"
        per_study: dict[str, set[str]] = {}
        for study, sop_class, _sop in distinct:
            per_study.setdefault(study, set()).add(sop_class)
        assert per_study == {u: OUTPUT_CLASSES for u in uids}
        assert len(pacs.received) >= len(distinct)  # at least once; re-sends replace themselves
        metrics = httpx.get(f"{serve.base}/metrics", timeout=10).text
        assert "secondreader_studies_total" in metrics
        log = serve.log.read_text()
        for text in (log, metrics):
            assert "CANARY" not in text
        assert not any(uid in metrics for uid in uids), "study UIDs never reach /metrics"
        assert 'route="/v1/studies/{study_uid}"' in metrics
        for uid in uids:
            assert uid not in log, "study UIDs never reach the log"
    finally:
        serve.kill(signal.SIGTERM)


# -- PACS down, then back ------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # pynetdicom's refused sockets
def test_pacs_down_then_back_delivers_everything_once(tmp_path: Path, pneumonia_predictor) -> None:  # type: ignore[no-untyped-def]
    from secondreader.store.models import Outbox

    port = free_port()
    store = Store(f"sqlite:///{tmp_path / 'sr.db'}")
    store.migrate()
    core = ScreeningService(store, [pneumonia_predictor], home=tmp_path, max_image_pixels=64_000_000,
                            pacs_destination=f"PACS@127.0.0.1:{port}")
    core.start_background(stable_seconds=0.3, interval=0.1)
    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", ["*"], core.receive)
    back: Pacs | None = None
    try:
        for i in range(4):
            assert _store_one(receiver.port, make_cxr_dataset(400, 400, lesion_at=(100 + 30 * i, 200))) == 0
            time.sleep(0.4)
        _wait(lambda: store.outbox_counts().get("pending", 0) == 12, 120, "12 results queued")
        time.sleep(2.0)  # several failed rounds against the closed port
        assert store.outbox_counts() == {"pending": 12}
        back = Pacs(port)
        _wait(lambda: store.outbox_counts() == {"sent": 12}, 120, "all 12 delivered")
        with store.engine.connect() as connection:
            queued = [Path(p) for p in connection.execute(select(Outbox.path).order_by(Outbox.id)).scalars()]
        expected = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in queued]
        received = [sop for _, _, sop in back.copies()]
        assert sorted(received) == sorted(expected) and len(set(received)) == len(expected), "each once"
    finally:
        receiver.stop()
        core.close()
        if back is not None:
            back.stop()


# -- the store down ------------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """A throwaway cluster on its own port (as scripts/throwaway-postgres.sh, but restartable)."""

    def __init__(self, root: Path, port: int) -> None:
        bin_dir = _pg_bin()
        assert bin_dir is not None
        self.bin, self.port = bin_dir, port
        self.dir = root / "pgdata"
        self.dir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "faults")
        self.url = f"postgresql://postgres@127.0.0.1:{port}/faults?connect_timeout=2"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir), "-o", f"-k {self.dir} -h 127.0.0.1 -p {self.port}",
                  "-l", str(self.dir / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.dir), "-m", mode, "-w", "stop")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    require(_pg_bin() is not None, "PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    require(os.geteuid() != 0 or shutil.which("runuser") is not None, "runuser is needed to run PostgreSQL as root")
    # Not under pytest's tmp folder: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="secondreader-pg-faults."))
    try:
        pg = Postgres(root, free_port())
        yield pg
        try:
            pg.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_store_down_answers_out_of_resources_then_recovers(tmp_path: Path, pneumonia_predictor,  # type: ignore[no-untyped-def]
                                                           postgres: Postgres) -> None:
    store = Store(postgres.url)
    store.migrate()
    core = ScreeningService(store, [pneumonia_predictor], home=tmp_path, max_image_pixels=64_000_000)
    core.start_background(stable_seconds=0.5, interval=0.1)
    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", ["*"], core.receive)
    try:
        before = make_cxr_dataset(400, 400)
        assert _store_one(receiver.port, before) == 0
        postgres.stop("immediate")
        during = [make_cxr_dataset(400, 400) for _ in range(3)]
        statuses = [_store_one(receiver.port, ds) for ds in during]
        assert all(s is not None and 0xA700 <= s <= 0xA7FF for s in statuses), [hex(s or 0) for s in statuses]
        postgres.start()
        for ds in during:  # the modality retries; the first tries may still meet stale connections
            for _attempt in range(10):
                status = _store_one(receiver.port, ds)
                assert status is not None and (status == 0 or 0xA700 <= status <= 0xA7FF), status
                if status == 0:
                    break
                time.sleep(0.5)
            assert status == 0, "the receiver recovers when the store is back"
        uids = [str(ds.StudyInstanceUID) for ds in [before, *during]]
        _wait(lambda: all((r := store.get_study(u)) is not None and r["status"] == "screened" for u in uids), 120,
              "every acknowledged study screened after the outage")
    finally:
        receiver.stop()
        core.close()
        store.engine.dispose()
