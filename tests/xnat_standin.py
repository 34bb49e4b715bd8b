"""A stand-in for the few XNAT REST endpoints dcmpack calls. It is NOT a real XNAT.

A real XNAT cannot be installed from the registries available here (the web app ships only from
XNAT's own site; see /work/shared/PACS.md), so ``packager.sources.remote``'s XNAT client is tested
against this small ``http.server`` that answers like XNAT 1.8's REST API does for these calls:

``GET /data/projects/{project}/subjects/{subject}/experiments/{label}/scans?format=json``
    ``{"ResultSet": {"Result": [{"xsiType", "xnat_imagescandata_id", "note",
    "series_description", "ID", "type", "URI", "quality"}, ...], "totalRecords": "N"}}``
``GET .../scans/{ID}/resources/DICOM/files?format=json``
    ``ResultSet.Result`` rows ``{"Name", "Size", "URI", "collection", "file_tags",
    "file_format", "file_content", "cat_ID", "digest"}``; ``URI`` is
    ``/data/experiments/{accession}/scans/{ID}/resources/{resource id}/files/{name}``.
``GET .../scans/{ID}/resources/DICOM/files?format=zip``
    a zip in XNAT's download layout ``{label}/scans/{ID}-{type}/resources/DICOM/files/{name}``.
``GET /data/experiments/{accession}/scans/{ID}/resources/{resource id}/files/{name}``
    one file, as stored.

HTTP basic authentication on every request (401 with ``WWW-Authenticate`` otherwise); unknown
paths answer 404. Only what dcmpack uses is here: no JSESSION, no search engine, no uploads.
Tests can inject faults (``fail(...)``) and read the request log (``requests``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pydicom

USER, PASSWORD = "xnatuser", "xnat-secret-4Kp"
PROJECT = "PROJ"

_XSI_BY_MODALITY = {"MR": "xnat:mrScanData", "CT": "xnat:ctScanData", "PT": "xnat:petScanData", "SR": "xnat:srScanData"}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class Scan:
    """One XNAT scan with its DICOM resource (file name -> local path)."""

    scan_id: str
    scan_type: str
    xsi_type: str
    files: dict[str, Path]
    resource_id: str = "0"


@dataclass
class Experiment:
    """One imaging session (XNAT experiment) of a subject in a project."""

    project: str
    subject: str
    label: str
    accession: str
    scans: list[Scan] = field(default_factory=list)


def sample_archive(sample_root: Path) -> list[Experiment]:
    """Study folders of series folders as XNAT would hold them: PROJ / SUBJnn / SESSnn.

    Labels are neutral (the sample's folder names carry synthetic PHI). One scan per series
    folder: ``NN_name`` gives scan ID ``NN`` and type ``name`` (the sample), other names the
    folder's position and name (dcm_qa_nih's ``mr_0004``). Non-DICOM files are left out, as
    XNAT's DICOM resources hold only DICOM.
    """
    experiments: list[Experiment] = []
    subjects: dict[str, str] = {}
    resource_ids = iter(range(1000, 100000))
    for number, folder in enumerate(sorted(p for p in sample_root.iterdir() if p.is_dir()), 1):
        experiment: Experiment | None = None
        for position, series in enumerate(sorted(p for p in folder.iterdir() if p.is_dir()), 1):
            files, header = {}, None
            for path in sorted(p for p in series.iterdir() if p.is_file()):
                try:
                    header = pydicom.dcmread(path, stop_before_pixels=True)
                except pydicom.errors.InvalidDicomError:
                    continue
                files[path.name] = path
            if header is None:
                continue
            if experiment is None:
                subject = subjects.setdefault(str(header.PatientID), f"SUBJ{len(subjects) + 1:02d}")
                experiment = Experiment(PROJECT, subject, f"SESS{number:02d}", f"XNAT_E{number:05d}")
                experiments.append(experiment)
            xsi = (
                "xnat:scScanData"
                if header.SOPClassUID == _SECONDARY_CAPTURE
                else _XSI_BY_MODALITY.get(str(header.Modality), "xnat:otherDicomScanData")
            )
            match = re.fullmatch(r"(\d+)_(.+)", series.name)
            scan_id, scan_type = (str(int(match[1])), match[2]) if match else (str(position), series.name)
            experiment.scans.append(Scan(scan_id, scan_type, xsi, files, str(next(resource_ids))))
    return experiments


class XnatStandin:
    """The stand-in server on 127.0.0.1 (free port), in a background thread."""

    def __init__(self, experiments: list[Experiment], workdir: Path) -> None:
        self.experiments = experiments
        self.workdir = workdir
        self.requests: list[tuple[str, str]] = []  # (path, query) of every request
        self._faults: list[list] = []  # [regex, status, remaining]
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        """The listening port."""
        assert self._server is not None
        return self._server.server_address[1]

    def spec(self, experiment: Experiment) -> str:
        """The dcmpack source URL of one experiment."""
        return f"xnat+http://127.0.0.1:{self.port}/{experiment.project}/{experiment.subject}/{experiment.label}"

    def fail(self, pattern: str, status: int, times: int = 1_000_000) -> None:
        """Answer ``status`` to the next ``times`` requests whose path+query matches ``pattern``."""
        with self._lock:
            self._faults.append([re.compile(pattern), status, times])

    def clear(self) -> None:
        """Forget injected faults and the request log."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    def start(self) -> None:
        """Listen on a free loopback port."""
        standin = self

        class Handler(_Handler):
            server_state = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- request handling ----------------------------------------------------------------
    def _fault(self, target: str) -> int | None:
        with self._lock:
            for fault in self._faults:
                if fault[2] > 0 and fault[0].search(target):
                    fault[2] -= 1
                    return fault[1]
        return None

    def _experiment(self, project: str, subject: str, label: str) -> Experiment | None:
        return next((e for e in self.experiments if (e.project, e.subject, e.label) == (project, subject, label)), None)

    def _by_accession(self, accession: str) -> Experiment | None:
        return next((e for e in self.experiments if e.accession == accession), None)


_EXPERIMENT = r"/data/projects/([^/]+)/subjects/([^/]+)/experiments/([^/]+)"
_ROUTES = (
    ("scans", re.compile(rf"^{_EXPERIMENT}/scans/?$")),
    ("files", re.compile(rf"^{_EXPERIMENT}/scans/([^/]+)/resources/DICOM/files/?$")),
    ("file", re.compile(r"^/data/experiments/([^/]+)/scans/([^/]+)/resources/([^/]+)/files/(.+)$")),
)


class _Handler(BaseHTTPRequestHandler):
    server_state: XnatStandin
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read ``XnatStandin.requests`` instead."""

    def do_GET(self) -> None:
        """Route one GET."""
        state = self.server_state
        parts = urlsplit(self.path)
        with state._lock:
            state.requests.append((parts.path, parts.query))
        if not self._authorized():
            self._send(
                401,
                b'{"error": "authentication required"}',
                "application/json",
                {"WWW-Authenticate": 'Basic realm="XNAT"'},
            )
            return
        status = state._fault(self.path)
        if status is not None:
            self._send(status, b"injected fault", "text/plain")
            return
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        for name, pattern in _ROUTES:
            match = pattern.match(parts.path)
            if match:
                groups = [unquote(g) for g in match.groups()]
                getattr(self, f"_get_{name}")(groups, query.get("format", "json"))
                return
        self._send(404, b"not found", "text/plain")

    def _authorized(self) -> bool:
        expected = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return self.headers.get("Authorization", "") == f"Basic {expected}"

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _result_set(self, rows: list[dict]) -> None:
        body = json.dumps({"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}})
        self._send(200, body.encode(), "application/json")

    def _get_scans(self, groups: list[str], fmt: str) -> None:
        experiment = self.server_state._experiment(*groups)
        if experiment is None:
            self._send(404, b"experiment not found", "text/plain")
            return
        self._result_set(
            [
                {
                    "xsiType": scan.xsi_type,
                    "xnat_imagescandata_id": str(90000 + number),
                    "note": "",
                    "series_description": scan.scan_type,
                    "ID": scan.scan_id,
                    "type": scan.scan_type,
                    "URI": f"/data/experiments/{experiment.accession}/scans/{scan.scan_id}",
                    "quality": "usable",
                }
                for number, scan in enumerate(experiment.scans)
            ]
        )

    def _get_files(self, groups: list[str], fmt: str) -> None:
        experiment = self.server_state._experiment(*groups[:3])
        scan = next((s for s in experiment.scans if s.scan_id == groups[3]), None) if experiment else None
        if experiment is None or scan is None:
            self._send(404, b"scan not found", "text/plain")
            return
        if fmt == "zip":
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for name, path in scan.files.items():
                    archive.write(
                        path, f"{experiment.label}/scans/{scan.scan_id}-{scan.scan_type}/resources/DICOM/files/{name}"
                    )
            self._send(200, buffer.getvalue(), "application/zip")
            return
        self._result_set(
            [
                {
                    "Name": name,
                    "Size": str(path.stat().st_size),
                    "URI": f"/data/experiments/{experiment.accession}/scans/{scan.scan_id}/resources/"
                    f"{scan.resource_id}/files/{quote(name)}",
                    "collection": "DICOM",
                    "file_tags": "",
                    "file_format": "DICOM",
                    "file_content": "RAW",
                    "cat_ID": scan.resource_id,
                    "digest": hashlib.md5(path.read_bytes()).hexdigest(),
                }
                for name, path in scan.files.items()
            ]
        )

    def _get_file(self, groups: list[str], fmt: str) -> None:
        accession, scan_id, resource_id, name = groups
        experiment = self.server_state._by_accession(accession)
        scan = next((s for s in experiment.scans if s.scan_id == scan_id), None) if experiment else None
        path = scan.files.get(name) if scan and scan.resource_id == resource_id else None
        if path is None:
            self._send(404, b"file not found", "text/plain")
            return
        self._send(200, path.read_bytes(), "application/dicom")
