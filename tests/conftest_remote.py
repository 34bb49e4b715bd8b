"""pytest plugin: a real Orthanc PACS (and the XNAT stand-in) for the remote-source tests.

Register it once in ``tests/conftest.py`` with ``pytest_plugins = ["conftest_remote"]`` (``tests/``
is on ``sys.path`` in pytest's default import mode); ``tests/test_remote.py`` also requests it
itself, so it runs on its own.

Orthanc is started exactly as ``/work/shared/PACS.md`` describes: one JSON config file in a
throwaway directory, free loopback ports (a lost port race makes Orthanc exit 255 and we retry with
new ports), HTTP basic authentication on, the DICOMweb plugin, ``DicomModalities`` entries for our
AE titles, ``TCP_NODELAY=1`` in its environment (Debian's DCMTK leaves Nagle on: 20/s instead of
200/s over DIMSE), readiness = an authenticated ``GET /system``, stopped by PID.
A missing ``Orthanc`` binary FAILS the tests (never skips): ``scripts/orthanc.sh install``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DICOM = REPO / "sample_data" / "dicom"
CORPUS_ROOT = Path(os.environ.get("DCMPACK_CORPUS", REPO.parent / "shared" / "corpus"))
DCM_QA_NIH = CORPUS_ROOT / "dcm_qa_nih" / "In"

ORTHANC_USER = "ci"
ORTHANC_PASSWORD = "ci-secret-7Qz"  # distinctive, so tests can search messages and logs for it
CALLING_AET = "DCMPACK"  # our AE title, registered with C-GET and C-MOVE rights
NO_GET_AET = "NOGETSCU"  # registered without C-GET rights: the peer refuses C-GET for it
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = "install it with `scripts/orthanc.sh install` (apt-get install -y orthanc orthanc-dicomweb)"


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (callers retry on races)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def orthanc_binary() -> str:
    """Path of the Orthanc executable (Debian puts it in /usr/sbin, not always on PATH)."""
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail(f"Orthanc is not installed: {INSTALL_HINT}", pytrace=False)
    if not DICOMWEB_PLUGIN.exists():
        pytest.fail(f"the Orthanc DICOMweb plugin is missing ({DICOMWEB_PLUGIN}): {INSTALL_HINT}", pytrace=False)
    return found


@dataclass
class OrthancServer:
    """One running Orthanc process and how to reach it."""

    workdir: Path
    http_port: int
    dicom_port: int
    scu_port: int  # where our C-MOVE storage SCP listens (the DCMPACK modality's port)
    process: subprocess.Popen = field(repr=False)

    @property
    def http(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_spec(self) -> str:
        """A dcmpack source spec prefix for this server's DICOMweb root (add ``?...``)."""
        return f"dicomweb+http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def dimse_spec(self) -> str:
        """A dcmpack source spec prefix for this server's DIMSE port (add ``?...``)."""
        return f"dimse://ORTHANC@127.0.0.1:{self.dicom_port}"

    @property
    def move_dest(self) -> str:
        """The C-MOVE destination registered in Orthanc's DicomModalities."""
        return f"{CALLING_AET}:{self.scu_port}"

    def session(self) -> requests.Session:
        """An authenticated REST session."""
        session = requests.Session()
        session.auth = (ORTHANC_USER, ORTHANC_PASSWORD)
        return session

    def upload(self, paths: Iterable[Path]) -> int:
        """POST every file to /instances; returns how many Orthanc stored (non-DICOM is refused)."""
        stored = 0
        with self.session() as session:
            for path in paths:
                response = session.post(f"{self.http}/instances", data=path.read_bytes(), timeout=30)
                if response.status_code == 200:
                    stored += 1
                elif response.status_code != 400:  # 400 = not DICOM (README files in the corpus)
                    response.raise_for_status()
        return stored

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-transfer, as in a crash or a network cut."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, wait up to 10 s, then SIGKILL (the work dir is throwaway)."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        """Orthanc's log (for failure messages)."""
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _config(workdir: Path, http_port: int, dicom_port: int, scu_port: int) -> dict:
    rights = {"AllowEcho": True, "AllowStore": True, "AllowFind": True, "AllowGet": True, "AllowMove": True}
    return {
        "Name": "dcmpack-ci",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomModalities": {
            "dcmpack": {"AET": CALLING_AET, "Host": "127.0.0.1", "Port": scu_port, **rights},
            "noget": {"AET": NO_GET_AET, "Host": "127.0.0.1", "Port": scu_port, **rights, "AllowGet": False},
        },
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},  # no "Host": it drops the port
    }


def start_orthanc(workdir: Path, *, attempts: int = 5, ports: tuple[int, int, int] | None = None) -> OrthancServer:
    """Start Orthanc with a fresh config in ``workdir`` and wait for an authenticated /system.

    ``ports`` reuses given ports (restart on the same storage); otherwise free ports are picked
    and a lost port race (exit code 255) is retried with new ones.
    """
    binary = orthanc_binary()
    last_log = ""
    for _ in range(attempts):
        http_port, dicom_port, scu_port = ports or free_ports(3)
        config = workdir / "orthanc.json"
        config.write_text(json.dumps(_config(workdir, http_port, dicom_port, scu_port), indent=1))
        env = {**os.environ, "TCP_NODELAY": "1"}
        with open(workdir / "orthanc.log", "wb") as log:
            process = subprocess.Popen(
                [binary, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
            )
        server = OrthancServer(workdir, http_port, dicom_port, scu_port, process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.alive():
            try:
                ok = server.session().get(f"{server.http}/system", timeout=2).ok
            except requests.ConnectionError:
                ok = False
            if ok:
                return server
            time.sleep(0.05)
        last_log = server.log()
        server.kill()
    pytest.fail(f"Orthanc did not start after {attempts} attempts; last log:\n{last_log[-3000:]}", pytrace=False)


@pytest.fixture(scope="module")
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start extra, independent Orthanc servers (e.g. to kill one); all stopped at module end."""
    servers: list[OrthancServer] = []

    def factory(ports: tuple[int, int, int] | None = None, workdir: Path | None = None) -> OrthancServer:
        folder = workdir or tmp_path_factory.mktemp("orthanc")
        server = start_orthanc(folder, ports=ports)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def orthanc(orthanc_factory) -> OrthancServer:
    """A real Orthanc holding the three sample studies and both dcm_qa_nih studies."""
    if not DCM_QA_NIH.is_dir():
        pytest.fail(f"corpus missing: {DCM_QA_NIH} (set DCMPACK_CORPUS to the corpus root)", pytrace=False)
    server = orthanc_factory()
    sample = sorted(p for p in SAMPLE_DICOM.rglob("*") if p.is_file())
    corpus = sorted(p for p in DCM_QA_NIH.rglob("*") if p.is_file())
    assert server.upload(sample) == len(sample) == 903
    assert server.upload(corpus) == 608  # 618 files, 10 of them README text files
    return server


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, private key) for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed (apt-get install -y openssl)", pytrace=False)
    cert, key = folder / "ca.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class TlsProxy:
    """HTTPS in front of a loopback HTTP port, like nginx in front of a PACS.

    Debian 12's Orthanc 1.10 cannot serve HTTPS itself: its CivetWeb resets every TLS connection
    right after the handshake (OpenSSL 3; tested with curl and requests), so TLS is terminated
    here with the standard ``ssl`` module and the bytes are relayed to Orthanc unchanged.
    """

    def __init__(self, target_port: int, folder: Path) -> None:
        self.ca_file, key = self_signed_certificate(folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key)
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    client = context.wrap_socket(self.request, server_side=True)
                    upstream = socket.create_connection(("127.0.0.1", target_port))
                except OSError:  # e.g. the client refused our certificate: that is the test
                    return
                with client, upstream:
                    proxy._relay(client, upstream)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        """The HTTPS port."""
        return self._server.server_address[1]

    @staticmethod
    def _relay(client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes."""

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(1 << 16):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join(timeout=60)

    def stop(self) -> None:
        """Stop accepting connections."""
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def xnat_standin() -> Iterator:
    """The XNAT REST stand-in (see ``tests/xnat_standin.py``) serving the sample data."""
    from xnat_standin import XnatStandin, sample_archive

    with tempfile.TemporaryDirectory() as folder:
        server = XnatStandin(sample_archive(SAMPLE_DICOM), Path(folder))
        server.start()
        try:
            yield server
        finally:
            server.stop()
