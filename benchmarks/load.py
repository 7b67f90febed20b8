"""Load on the real service: N parallel C-STORE associations and M HTTP clients on loopback.

Starts ``secondreader serve`` (a subprocess, SQLite store under a temporary state folder), sends
new single-instance studies for ``--seconds`` from every client at once, then waits for the work
to drain. Counts instances sent vs acknowledged vs stored (rows in the store) vs screened (results
in the store), which must be equal, and prints throughput and p50/p95/p99 latencies:

- C-STORE: the time for the receiver's answer (spool + fsync + store row);
- DICOM to result: from the C-STORE answer until ``GET /v1/studies/UID`` has the result (includes
  the study-stable wait, ``--stable``);
- HTTP: ``POST /v1/screen?wait=120`` round trip (upload, screening, result).

    python benchmarks/load.py --seconds 20 --associations 4 --http-clients 2

Exit status 1 when the counts differ.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
from common import Table, machine, pct, synthetic_cr, wait_until_ready, write_json
from pynetdicom import AE
from sqlalchemy import create_engine, text

KEY = "load-benchmark-key"


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    acked: list[str] = field(default_factory=list)  # study UIDs
    refused: int = 0
    latency: list[float] = field(default_factory=list)
    acked_at: dict[str, float] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _study(folder: Path, seed: int, side: int) -> pydicom.Dataset:
    path = synthetic_cr(folder / f"{seed}.dcm", seed=seed, side=side)
    ds = pydicom.dcmread(path)
    path.unlink()
    return ds


def _dicom_client(port: int, deadline: float, tally: Tally, folder: Path, seed0: int, side: int) -> None:
    ae = AE(ae_title="LOADGEN")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="SECONDREADER")
    if not assoc.is_established:
        raise SystemExit("the receiver refused the association")
    seed = seed0
    try:
        while time.monotonic() < deadline:
            ds = _study(folder, seed, side)
            seed += 1
            t0 = time.perf_counter()
            answer = assoc.send_c_store(ds)
            elapsed = time.perf_counter() - t0
            with tally.lock:
                tally.sent += 1
                if "Status" in answer and int(answer.Status) == 0:
                    tally.acked.append(str(ds.StudyInstanceUID))
                    tally.acked_at[str(ds.StudyInstanceUID)] = time.monotonic()
                    tally.latency.append(elapsed)
                else:
                    tally.refused += 1
    finally:
        assoc.release()


def _http_client(base: str, deadline: float, tally: Tally, folder: Path, seed0: int, side: int) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/dicom"}
    seed = seed0
    with httpx.Client(timeout=300) as client:
        while time.monotonic() < deadline:
            ds = _study(folder, seed, side)
            seed += 1
            body = Path(folder / f"h{seed}.dcm")
            ds.save_as(body, enforce_file_format=True)
            data = body.read_bytes()
            body.unlink()
            t0 = time.perf_counter()
            response = client.post(f"{base}/v1/screen?wait=120", content=data, headers=headers)
            elapsed = time.perf_counter() - t0
            with tally.lock:
                tally.sent += 1
                if response.status_code == 200:
                    tally.acked.append(str(ds.StudyInstanceUID))
                    tally.latency.append(elapsed)
                else:
                    tally.refused += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the clients send")
    parser.add_argument("--associations", type=int, default=4, help="parallel C-STORE associations")
    parser.add_argument("--http-clients", type=int, default=2, help="parallel HTTP clients")
    parser.add_argument("--side", type=int, default=512, help="image side in pixels (12-bit CR)")
    parser.add_argument("--stable", type=float, default=1.0, help="SECONDREADER_STUDY_STABLE_SECONDS")
    parser.add_argument("--drain", type=float, default=300.0, help="longest wait for the work to finish")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="secondreader-load."))
    http_port, dicom_port = _free_port(), _free_port()
    env = {**os.environ, "SECONDREADER_HOME": str(home), "SECONDREADER_API_KEYS": KEY,
           "SECONDREADER_DICOM_PORT": str(dicom_port), "SECONDREADER_STUDY_STABLE_SECONDS": str(args.stable),
           "SECONDREADER_HL7_PORT": str(_free_port()),
           "SECONDREADER_DICOM_MAX_ASSOCIATIONS": str(max(16, args.associations + 2)),
           "SECONDREADER_LOG_LEVEL": "WARNING"}
    base = f"http://127.0.0.1:{http_port}"
    with open(home / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "secondreader.cli", "serve", "--port", str(http_port),
                                 "--no-samples"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            ready_s = wait_until_ready(base, timeout=300, stopped=lambda: None if proc.poll() is None else
                                       f"serve exited with {proc.returncode}")
        except RuntimeError as exc:
            print((home / "serve.log").read_text()[-3000:], file=sys.stderr)
            raise SystemExit(f"the service did not start: {exc}") from None
        print(f"service ready in {ready_s:.1f} s; sending for {args.seconds:.0f} s from "
              f"{args.associations} association(s) and {args.http_clients} HTTP client(s), {args.side}^2 CR",
              flush=True)
        dicom, http = Tally(), Tally()
        work = home / "gen"
        work.mkdir()
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        threads = [threading.Thread(target=_dicom_client, args=(dicom_port, deadline, dicom, work, 1_000_000 * (i + 1),
                                                                args.side)) for i in range(args.associations)]
        threads += [threading.Thread(target=_http_client, args=(base, deadline, http, work, 50_000_000 + 1_000_000 * i,
                                                                args.side)) for i in range(args.http_clients)]
        for t in threads:
            t.start()
        # Time to result for the C-STORE'd studies, polled while they are sent and after.
        results_at: dict[str, float] = {}
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(timeout=30) as poller:
            while True:
                with dicom.lock:
                    pending = [u for u in dicom.acked if u not in results_at]
                senders_done = not any(t.is_alive() for t in threads)
                if senders_done and not pending:
                    break
                if time.monotonic() - deadline > args.drain:
                    break
                for uid in pending:
                    if poller.get(f"{base}/v1/studies/{uid}", headers=headers).status_code == 200:
                        results_at[uid] = time.monotonic()
                time.sleep(0.1)
        for t in threads:
            t.join()
        elapsed = max(results_at.values(), default=time.monotonic()) - t0
        engine = create_engine(f"sqlite:///{home / 'secondreader.db'}")
        with engine.connect() as connection:
            stored = int(connection.execute(text("SELECT COUNT(*) FROM inbound_instances")).scalar() or 0)
            screened_rows = connection.execute(text("SELECT study_instance_uid FROM studies WHERE status = 'screened'"))
            screened = {str(r[0]) for r in screened_rows}
        engine.dispose()
        to_result = [results_at[u] - dicom.acked_at[u] for u in results_at]
        dicom_screened = len(screened & set(dicom.acked))
        http_screened = len(screened & set(http.acked))

        table = Table(f"Load, {elapsed:.1f} s from first send to last result ({machine()['cpus']} CPUs)",
                      ["channel", "clients", "sent", "answered ok", "stored", "screened", "studies/s",
                       "p50 ms", "p95 ms", "p99 ms"], [22, 9, 7, 13, 8, 10, 11, 9, 9, 9])
        lat = dicom.latency or [0.0]
        table.add("C-STORE (answer)", args.associations, dicom.sent, len(dicom.acked), stored, dicom_screened,
                  dicom_screened / elapsed, pct(lat, 50), pct(lat, 95), pct(lat, 99))
        res = to_result or [0.0]
        table.add("DICOM to result", args.associations, "", "", "", len(to_result), len(to_result) / elapsed,
                  pct(res, 50), pct(res, 95), pct(res, 99))
        hlat = http.latency or [0.0]
        table.add("HTTP /v1/screen", args.http_clients, http.sent, len(http.acked), "", http_screened,
                  http_screened / elapsed, pct(hlat, 50), pct(hlat, 95), pct(hlat, 99))
        total = dicom_screened + http_screened
        print(f"\ntotal: {total} studies screened in {elapsed:.1f} s = {total / elapsed:.2f} studies/s", flush=True)
        ok = (dicom.sent == len(dicom.acked) == stored == dicom_screened
              and http.sent == len(http.acked) == http_screened)
        print("counts equal (sent = acknowledged = stored = screened): " + ("yes" if ok else "NO"), flush=True)
        write_json(args.json, {"machine": machine(), "args": vars(args), "table": table.as_dict(), "ok": ok})
        return 0 if ok else 1
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


if __name__ == "__main__":
    sys.exit(main())
