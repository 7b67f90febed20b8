"""The DICOM receiver's doors: TLS (certificates made here with the openssl command), mutual TLS, the calling-AE
allow-list and the association limit, over real sockets on loopback (C-ECHO only, no model)."""

from __future__ import annotations

import gc
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from secondreader.config import Settings
from secondreader.dicom.scp import Receiver, server_ssl_context, start_receiver

from ..conftest import require

# pynetdicom leaves the sockets of refused handshakes and rejected associations to the garbage
# collector; collect them inside each test, where this filter applies, not at the end of the session.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_sockets() -> Iterator[None]:
    yield
    gc.collect()


def _never(data: bytes, ds: Dataset, calling_ae: str) -> bool:
    raise AssertionError("no C-STORE is sent in these tests")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server and a client certificate signed by it, and a self-signed rogue (openssl CLI)."""
    require(shutil.which("openssl") is not None, "the openssl command is needed to make test certificates")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca",
             cwd=tmp_path)
    for name in ("server", "client"):
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=tmp_path)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "1", cwd=tmp_path)
    _openssl("req", "-x509", *key, "-keyout", "rogue.key", "-out", "rogue.crt", "-days", "1", "-subj", "/CN=rogue",
             cwd=tmp_path)
    return {"ca": tmp_path / "ca.crt", **{f"{n}_{k}": tmp_path / f"{n}.{k}" for n in ("server", "client", "rogue")
                                          for k in ("crt", "key")}}


def _client_context(pki: dict[str, Path], cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
    context.check_hostname = False  # loopback by address; the chain is still verified
    if cert is not None:
        context.load_cert_chain(str(pki[f"{cert}_crt"]), str(pki[f"{cert}_key"]))
    return context


def _echo(port: int, *, calling: str = "MODALITY", tls: ssl.SSLContext | None = None) -> int | None:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SECONDREADER", tls_args=(tls, None) if tls else None)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


@pytest.fixture
def tls_receiver(pki: dict[str, Path]) -> Iterator[Receiver]:
    context = server_ssl_context(pki["server_crt"], pki["server_key"], pki["ca"])
    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", ["MODALITY"], _never, ssl_context=context)
    yield receiver
    receiver.stop()


def test_mutual_tls(tls_receiver: Receiver, pki: dict[str, Path]) -> None:
    assert _echo(tls_receiver.port, tls=_client_context(pki, "client")) == 0
    assert _echo(tls_receiver.port) is None, "plain TCP is refused by a TLS receiver"
    assert _echo(tls_receiver.port, tls=_client_context(pki)) is None, "a caller without a certificate is refused"
    assert _echo(tls_receiver.port, tls=_client_context(pki, "rogue")) is None, "a certificate from another CA too"
    assert _echo(tls_receiver.port, calling="STRANGER", tls=_client_context(pki, "client")) is None, \
        "TLS does not replace the calling-AE allow-list"


def test_tls_settings_and_bad_files(pki: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        Settings(dicom_tls_cert=pki["server_crt"])
    with pytest.raises(ValueError, match="needs"):
        Settings(dicom_tls_ca=pki["ca"])
    with pytest.raises(ValueError, match="does not exist"):
        server_ssl_context(tmp_path / "missing.crt", pki["server_key"])
    with pytest.raises(ValueError, match="cannot be loaded"):
        server_ssl_context(pki["server_crt"], pki["client_key"])  # key of another certificate
    context = server_ssl_context(pki["server_crt"], pki["server_key"])
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2 and context.verify_mode == ssl.CERT_NONE


def test_association_limit() -> None:
    receiver = start_receiver("127.0.0.1", 0, "SECONDREADER", ["*"], _never, max_associations=2)
    held = []
    try:
        for _ in range(2):
            ae = AE(ae_title="HOLDER")
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", receiver.port, ae_title="SECONDREADER")
            assert assoc.is_established
            held.append(assoc)
        ae = AE(ae_title="THIRD")
        ae.acse_timeout = 5
        ae.add_requested_context(Verification)
        third = ae.associate("127.0.0.1", receiver.port, ae_title="SECONDREADER")
        assert third.is_rejected, "a third concurrent association is over the limit"
        held.pop().release()
        deadline = threading.Event()
        for _ in range(50):  # the released slot frees once its thread ends
            if _echo(receiver.port) == 0:
                break
            deadline.wait(0.1)
        else:
            pytest.fail("a slot freed by a released association is not reusable")
    finally:
        for assoc in held:
            assoc.release()
        receiver.stop()
    with pytest.raises(ValueError, match="at least 1"):
        start_receiver("127.0.0.1", 0, "SECONDREADER", ["*"], _never, max_associations=0)
