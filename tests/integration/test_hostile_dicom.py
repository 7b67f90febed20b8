"""Issue 30, findings 1 and 2: the DICOM receiver's transport is bounded before pynetdicom reads a PDU.

The receiver runs in its own process, so its peak RSS (VmHWM) is measured. Before the fix, two
unauthenticated sockets announcing 512 MiB PDUs took the process from 1.9 to 3.1 GB, a 300 MiB P-DATA
PDU from an allowed AE went around the 64 MiB data-set cap, and sixteen idle TCP connections held
every association slot (the PACS was locked out for 30 s, repeatably).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

pytestmark = pytest.mark.slow

ALLOWED = "GOODPACS"
MIB = 1024 * 1024
PEAK_GROWTH_LIMIT = 48 * MIB  # the attacks below send 3 x 64 MiB; before the fix the receiver held it all

_SERVER = textwrap.dedent("""
    import sys
    from secondreader.dicom.scp import start_receiver
    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", [sys.argv[1]], lambda data, ds, ae: True,
                              max_dataset_bytes=64 * 1024 * 1024, idle_seconds=float(sys.argv[2]))
    print(receiver.port, flush=True)
    sys.stdin.read()
""")


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    idle = getattr(request, "param", 30.0)
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, ALLOWED, str(idle)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    try:
        yield port, proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _flood(sock: socket.socket, header: bytes, size: int) -> int:
    """Send ``header`` then up to ``size`` bytes; the number sent before the receiver closed."""
    sent = 0
    chunk = b"\0" * MIB
    try:
        sock.sendall(header)
        while sent < size:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    return sent


def _echo(port: int, *, source: str = "127.0.0.1", ae_title: str = ALLOWED) -> int | None:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SECONDREADER", bind_address=(source, 0))
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) if "Status" in status else None


def test_over_long_pdus_are_refused_at_their_header(receiver: tuple[int, subprocess.Popen[str]]) -> None:
    port, proc = receiver
    assert _echo(port) == 0
    before = _peak_rss(proc.pid)
    sent = []
    for _ in range(2):  # unauthenticated: an A-ASSOCIATE-RQ announcing 512 MiB
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sent.append(_flood(sock, struct.pack(">BBL", 0x01, 0, 512 * MIB), 64 * MIB))
    ae = AE(ae_title=ALLOWED)  # allowed: an established association sends a 300 MiB P-DATA-TF
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SECONDREADER")
    assert assoc.is_established
    raw = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    assert isinstance(raw, socket.socket)
    sent.append(_flood(raw, struct.pack(">BBL", 0x04, 0, 300 * MIB), 64 * MIB))
    assoc.abort()
    growth = _peak_rss(proc.pid) - before
    assert growth < PEAK_GROWTH_LIMIT, f"peak RSS grew {growth / MIB:.0f} MiB"
    assert all(n < 64 * MIB for n in sent), sent  # closed before the flood was through
    assert proc.poll() is None and _echo(port) == 0  # still up and serving


def test_idle_connections_do_not_hold_the_slots(receiver: tuple[int, subprocess.Popen[str]]) -> None:
    port, _ = receiver
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]  # as in the probe
    try:
        # over the per-address cap (8): closed at once, not after the 30 s idle timeout
        closed = 0
        for sock in idle[8:]:
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == 8
        # the idle ones hold no association slot: the PACS (another address) is served
        assert _echo(port, source="127.0.0.2") == 0
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("receiver", [0.5], indirect=True)
def test_a_silent_or_slow_peer_is_closed_within_the_idle_time(receiver: tuple[int, subprocess.Popen[str]]) -> None:
    port, _ = receiver
    with socket.create_connection(("127.0.0.1", port), timeout=20) as silent:
        assert silent.recv(1) == b""  # nothing sent: closed after 0.5 s (the socket timeout is 20 s)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as slow:
        slow.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\0" * 10)  # a request that never completes
        try:
            assert slow.recv(1) == b""
        except ConnectionResetError:
            pass
    assert _echo(port) == 0
