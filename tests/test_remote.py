"""packager.sources.remote against a real Orthanc (DICOMweb, C-GET, C-MOVE) and the XNAT stand-in.

No mocks for DICOMweb or DIMSE: ``conftest_remote`` starts Orthanc 1.10 with authentication, the
DICOMweb plugin and our AE titles, and uploads the sample studies and dcm_qa_nih. XNAT cannot be
installed here, so its client runs against ``tests/xnat_standin.py`` (a stand-in, not XNAT).
Every retrieval is compared with the original files: same SOPInstanceUIDs, equal data sets and
pixel data, and the same data-set bytes (whole-file bytes where the server keeps the file).
"""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from packager.errors import ConfigError, InputError
from packager.model import SourceSet
from packager.sources.remote import RetryPolicy, fetch
from packager.sources.remote.context import Transient
from packager.sources.remote.dicomweb import _iter_parts

pytest.register_assert_rewrite("conftest_remote", "xnat_standin")

from conftest_remote import (  # noqa: E402 (after the rewrite registration)
    CALLING_AET,
    DCM_QA_NIH,
    NO_GET_AET,
    ORTHANC_PASSWORD,
    ORTHANC_USER,
    SAMPLE_DICOM,
    TlsProxy,
    free_ports,
)
from xnat_standin import PASSWORD as XNAT_PASSWORD  # noqa: E402
from xnat_standin import USER as XNAT_USER  # noqa: E402

pytestmark = pytest.mark.pacs  # a real Orthanc, started by the fixtures of conftest_remote

FAST = RetryPolicy(attempts=3, delay=0.1)  # keeps fault tests quick; the backoff shape is the same
SAMPLE_STUDY = SAMPLE_DICOM / "ZZPHIDOE_JANE_20240312"
GE_STUDY = DCM_QA_NIH / "20180918GE"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def originals(folder: Path, *, skip_sr: bool = True) -> dict[str, Path]:
    """SOPInstanceUID -> original file for every DICOM file under ``folder``."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue  # README files in the corpus
        if skip_sr and header.Modality == "SR":
            continue
        found[str(header.SOPInstanceUID)] = path
    return found


def study_uid(folder: Path) -> str:
    """The StudyInstanceUID of the files in ``folder``."""
    first = next(p for p in sorted(folder.rglob("*.dcm")) if p.is_file())
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the Part-10 preamble and file meta group."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", "not a Part-10 file"
    assert data[132:140] == b"\x02\x00\x00\x00UL\x04\x00", "no (0002,0000) group length first"
    return data[144 + int.from_bytes(data[140:144], "little") :]


def assert_identical(
    result: SourceSet, expected: dict[str, Path], *, whole_file: bool, full_compare_every: int = 1
) -> None:
    """Fetched files are exactly the expected instances.

    Every instance: same SOPInstanceUID set, Part-10 file meta naming it, same transfer syntax
    and the same data-set bytes (whole-file bytes where the server keeps the file: WADO-RS of
    REST-uploaded files, XNAT). Byte equality implies element equality; pydicom's element-by-
    element ``==`` (about 15 ms per GE file) and the PixelData check run on every
    ``full_compare_every``-th instance as a readable second opinion.
    """
    fetched = {}
    for source in result.files:
        meta = pydicom.filereader.read_file_meta_info(source.path)
        fetched[str(meta.MediaStorageSOPInstanceUID)] = (source.path, meta)
    assert len(fetched) == len(result.files), "an instance was staged twice"
    assert set(fetched) == set(expected)
    for number, (uid, (path, meta)) in enumerate(sorted(fetched.items())):
        original = expected[uid]
        assert meta.TransferSyntaxUID == pydicom.filereader.read_file_meta_info(original).TransferSyntaxUID
        if whole_file:
            assert path.read_bytes() == original.read_bytes()
        else:
            assert dataset_bytes(path) == dataset_bytes(original)
        if number % full_compare_every == 0:
            dataset, reference = pydicom.dcmread(path), pydicom.dcmread(original)
            assert dataset.SOPInstanceUID == uid
            assert dataset == reference  # every element (file meta is not part of equality)
            assert dataset.get("PixelData") == reference.get("PixelData")


class Progress:
    """Records progress calls; optionally runs an action once ``done`` reaches a count."""

    def __init__(self, at: int | None = None, action: Callable[[], None] | None = None) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.at, self.action = at, action

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))
        if self.action is not None and self.at is not None and done >= self.at:
            action, self.action = self.action, None
            action()

    @property
    def total(self) -> int | None:
        """The announced number of instances to download."""
        return next((t for _, t in self.calls if t is not None), None)

    @property
    def done(self) -> int:
        """Instances downloaded."""
        return max((d for d, _ in self.calls), default=0)


def snapshot(result: SourceSet) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every staged file: unchanged means not downloaded again."""
    return {f.relpath: (f.path.stat().st_ino, f.path.stat().st_mtime_ns) for f in result.files}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials from the developer's environment or ~/.netrc."""
    for name in ("DCMPACK_USER", "DCMPACK_PASSWORD", "DCMPACK_TOKEN", "DCMPACK_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.fixture
def orthanc_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """Orthanc's user and password in the environment."""
    monkeypatch.setenv("DCMPACK_USER", ORTHANC_USER)
    monkeypatch.setenv("DCMPACK_PASSWORD", ORTHANC_PASSWORD)


@pytest.fixture
def xnat_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """The XNAT stand-in's user and password in the environment."""
    monkeypatch.setenv("DCMPACK_USER", XNAT_USER)
    monkeypatch.setenv("DCMPACK_PASSWORD", XNAT_PASSWORD)


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    """A private staging dir, as the caller creates it."""
    folder = tmp_path / "staging"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def xnat(xnat_standin):
    """The module's XNAT stand-in, with an empty request log and no injected faults."""
    xnat_standin.clear()
    yield xnat_standin
    xnat_standin.clear()


def spec_for(server, method: str, query: str) -> tuple[str, dict]:
    """(spec, fetch kwargs) for one retrieval method against ``server``."""
    if method == "dicomweb":
        return f"{server.dicomweb_spec}?{query}", {}
    if method == "cget":
        return f"{server.dimse_spec}?{query}&calling={CALLING_AET}", {}
    assert method == "cmove"
    return f"{server.dimse_spec}?{query}", {"move_dest": server.move_dest, "retrieve": "move"}


METHODS = ("dicomweb", "cget", "cmove")


# --------------------------------------------------------------------------------------------
# 1-3: every method returns exactly the original instances
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("folder", [SAMPLE_STUDY, GE_STUDY], ids=["sample", "dcm_qa_nih-GE"])
def test_study_retrieved_identical(orthanc, orthanc_login, staging, method, folder) -> None:
    spec, kwargs = spec_for(orthanc, method, f"StudyInstanceUID={study_uid(folder)}")
    progress = Progress()
    result = fetch(spec, staging, progress=progress, **kwargs)
    expected = originals(folder)  # the sample's SR report is not fetched (non-image)
    assert_identical(
        result, expected, whole_file=method == "dicomweb", full_compare_every=1 if folder == SAMPLE_STUDY else 5
    )
    assert progress.total == progress.done == len(expected)
    assert result.root.parent == staging and stat.S_IMODE(result.root.stat().st_mode) == 0o700


@pytest.mark.parametrize("method", METHODS)
def test_patient_query_returns_every_study(orthanc, orthanc_login, staging, method, record_property) -> None:
    # dcm_qa_nih's GE and Siemens studies share PatientID "DEV" (PACS.md gotcha): both come back.
    spec, kwargs = spec_for(orthanc, method, "PatientID=DEV")
    started = time.perf_counter()
    result = fetch(spec, staging, **kwargs)
    seconds = time.perf_counter() - started
    expected = originals(DCM_QA_NIH)
    assert len(expected) == 608
    assert_identical(result, expected, whole_file=method == "dicomweb", full_compare_every=20)
    record_property(f"{method}_instances_per_second", round(len(expected) / seconds))


def test_cget_refused_falls_back_to_cmove(orthanc, orthanc_login, staging, caplog) -> None:
    # NOGETSCU is registered in Orthanc without C-GET rights: Orthanc aborts its C-GET.
    spec = (
        f"{orthanc.dimse_spec}?StudyInstanceUID={study_uid(SAMPLE_STUDY)}"
        f"&calling={NO_GET_AET}&move_dest={orthanc.move_dest}"
    )
    with caplog.at_level(logging.INFO, logger="packager.sources.remote"):
        result = fetch(spec, staging)
    assert "refused C-GET" in caplog.text
    assert_identical(result, originals(SAMPLE_STUDY), whole_file=False)


def test_cget_refused_without_move_dest(orthanc, staging) -> None:
    spec = f"{orthanc.dimse_spec}?StudyInstanceUID={study_uid(SAMPLE_STUDY)}&calling={NO_GET_AET}"
    with pytest.raises(InputError, match=r"refused C-GET.*move_dest") as caught:
        fetch(spec, staging)
    assert caught.value.exit_code == 3


def test_xnat_session_retrieved_identical(xnat, xnat_login, staging) -> None:
    session = xnat.experiments[0]  # SESS01 = the sample's ZZPHIDOE_JANE_20240312
    progress = Progress()
    result = fetch(xnat.spec(session), staging, progress=progress)
    assert_identical(result, originals(SAMPLE_STUDY), whole_file=True)
    assert progress.total == progress.done == 300
    assert result.label == xnat.spec(session)
    zips = [q for p, q in xnat.requests if q == "format=zip"]
    assert len(zips) == 7  # one per image scan; the SR scan (xnat:srScanData) is not fetched


def test_non_image_series_fetched_on_request(orthanc, orthanc_login, staging) -> None:
    spec = f"{orthanc.dicomweb_spec}?StudyInstanceUID={study_uid(SAMPLE_STUDY)}"
    result = fetch(spec, staging, skip_modalities=())
    assert_identical(result, originals(SAMPLE_STUDY, skip_sr=False), whole_file=True)


def test_study_date_range_query(orthanc, orthanc_login, staging) -> None:
    # The three sample studies are 20240312, 20240405 and 20240619.
    result = fetch(f"{orthanc.dicomweb_spec}?StudyDate=20240301-20240410", staging)
    uids = {str(pydicom.dcmread(f.path, stop_before_pixels=True).StudyInstanceUID) for f in result.files}
    assert uids == {study_uid(SAMPLE_STUDY), study_uid(SAMPLE_DICOM / "ZZPHIROE_RICHARD_20240405")}


# --------------------------------------------------------------------------------------------
# 4: faults
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dicomweb", "xnat"])
def test_wrong_password(orthanc, xnat, staging, monkeypatch, caplog, kind) -> None:
    wrong = "Wr0ng-pa55word-zz"
    if kind == "dicomweb":
        monkeypatch.setenv("DCMPACK_USER", ORTHANC_USER)
        spec = f"{orthanc.dicomweb_spec}?StudyInstanceUID={study_uid(SAMPLE_STUDY)}"
    else:
        monkeypatch.setenv("DCMPACK_USER", XNAT_USER)
        spec = xnat.spec(xnat.experiments[0])
    monkeypatch.setenv("DCMPACK_PASSWORD", wrong)
    with caplog.at_level(logging.DEBUG), pytest.raises(InputError) as caught:
        fetch(spec, staging)
    message = str(caught.value)
    assert message.startswith(f"{kind}: authentication failed (HTTP 401) at 127.0.0.1:")
    assert wrong not in message and wrong not in repr(caught.value) and wrong not in caplog.text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert caught.value.exit_code == 3


def test_bearer_token_is_sent_and_kept_secret(orthanc, staging, monkeypatch, caplog) -> None:
    # Orthanc takes basic auth only: a token (which wins over user/password) is refused with 401.
    token = "tok-9f8e7d6c5b4a"
    monkeypatch.setenv("DCMPACK_TOKEN", token)
    monkeypatch.setenv("DCMPACK_USER", ORTHANC_USER)
    monkeypatch.setenv("DCMPACK_PASSWORD", ORTHANC_PASSWORD)
    with caplog.at_level(logging.DEBUG), pytest.raises(InputError, match="authentication failed") as caught:
        fetch(f"{orthanc.dicomweb_spec}?PatientID=DEV", staging)
    assert token not in str(caught.value) and token not in caplog.text


def test_tls_verified_with_given_ca_only(orthanc, orthanc_login, staging, tmp_path, monkeypatch) -> None:
    proxy = TlsProxy(orthanc.http_port, tmp_path)  # HTTPS -> Orthanc's HTTP port
    try:
        spec = f"dicomweb+https://127.0.0.1:{proxy.port}/dicom-web?StudyInstanceUID={study_uid(SAMPLE_STUDY)}"
        with pytest.raises(InputError, match=r"TLS verification failed .* --ca-bundle"):
            fetch(spec, staging)
        assert len(fetch(spec, staging, ca_bundle=proxy.ca_file).files) == 300
        monkeypatch.setenv("DCMPACK_CA_BUNDLE", str(proxy.ca_file))
        assert len(fetch(spec, staging).files) == 300
        with pytest.raises(ConfigError, match=r"CA bundle .* not found"):
            fetch(spec, staging, ca_bundle=tmp_path / "missing.pem")
    finally:
        proxy.stop()


def test_no_credentials_is_an_authentication_failure(orthanc, staging) -> None:
    with pytest.raises(InputError, match="authentication failed"):
        fetch(f"{orthanc.dicomweb_spec}?PatientID=DEV", staging)


def test_netrc_credentials(orthanc, staging, tmp_path, monkeypatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {ORTHANC_USER} password {ORTHANC_PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    result = fetch(f"{orthanc.dicomweb_spec}?StudyInstanceUID={study_uid(SAMPLE_STUDY)}", staging)
    assert len(result.files) == 300


@pytest.mark.parametrize(
    "spec",
    [
        "dicomweb+http://ci:s3cret-in-url@127.0.0.1:8042/dicom-web?PatientID=X",
        "dicomweb+https://ci:s3cret-in-url@example.org/dicom-web?PatientID=X",
        "dimse://ORTHANC:s3cret-in-url@127.0.0.1:4242?PatientID=X",
        "xnat://ci:s3cret-in-url@example.org/P/S/E",
        "xnat+http://ci:s3cret-in-url@127.0.0.1:8080/P/S/E",
    ],
)
def test_password_in_url_refused(spec, staging) -> None:
    with pytest.raises(ConfigError, match="credentials in the URL are refused") as caught:
        fetch(spec, staging)
    assert "s3cret-in-url" not in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("dicomweb+http://127.0.0.1:8042/dicom-web", "at least one study filter"),
        ("dicomweb+http://127.0.0.1:8042/dicom-web?PatientName=DOE", "unknown query key 'PatientName'"),
        ("dicomweb+http://127.0.0.1:8042/dicom-web?PatientId=X", "did you mean 'PatientID'"),
        ("dicomweb+http://127.0.0.1:8042/dicom-web?PatientID=X&PatientID=Y", "given twice"),
        ("dicomweb+http://127.0.0.1:8042/dicom-web?PatientID=DO*", "wildcard"),
        ("dicomweb+http://127.0.0.1:8042/dicom-web?StudyInstanceUID=1.2.abc", "not a valid UID"),
        ("dicomweb+http://127.0.0.1:8042/dicom-web?StudyDate=2024-01-01", "YYYYMMDD"),
        ("dicomweb+http://127.0.0.1:99999/dicom-web?PatientID=X", "malformed URL"),
        ("dicomweb+ftp://127.0.0.1/dicom-web?PatientID=X", "unknown scheme"),
        ("dimse://127.0.0.1:4242?PatientID=X", "called AE title"),
        ("dimse://ORTHANC@127.0.0.1:4242?PatientID=X&calling=WAY_TOO_LONG_AE_TITLE", "calling="),
        ("dimse://ORTHANC@127.0.0.1:4242?PatientID=X&move_dest=NOPORT", "move_dest must be AET:port"),
        ("dimse://ORTHANC@127.0.0.1:4242?PatientID=X&retrieve=fast", "retrieve= must be"),
        ("xnat://example.org/PROJECT/SUBJECT", "PROJECT/SUBJECT/SESSION"),
        ("xnat://example.org/P/S/E?format=zip", "takes no query"),
    ],
)
def test_bad_spec_is_a_config_error(spec, match, staging) -> None:
    with pytest.raises(ConfigError, match=match):
        fetch(spec, staging)


def test_user_without_password_is_a_config_error(staging) -> None:
    with pytest.raises(ConfigError, match="no password"):
        fetch("dicomweb+http://someone@127.0.0.1:9/dicom-web?PatientID=X", staging)


def test_forced_move_needs_a_destination(orthanc, staging) -> None:
    with pytest.raises(ConfigError, match="retrieve=move needs move_dest"):
        fetch(f"{orthanc.dimse_spec}?PatientID=DEV&retrieve=move", staging)


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_unknown_study(orthanc, orthanc_login, staging, kind) -> None:
    base = orthanc.dicomweb_spec if kind == "dicomweb" else orthanc.dimse_spec
    with pytest.raises(InputError, match=f"^{kind}: no study matched the query"):
        fetch(f"{base}?StudyInstanceUID=1.2.3.4.5.6.7.8.9", staging)


def test_unknown_xnat_session(xnat, xnat_login, staging) -> None:
    with pytest.raises(InputError, match="no such session"):
        fetch(f"xnat+http://127.0.0.1:{xnat.port}/PROJ/SUBJ01/NOPE", staging)


@pytest.mark.parametrize("kind", ["dicomweb", "dimse", "xnat"])
def test_nothing_listening(orthanc_login, staging, caplog, kind) -> None:
    port = free_ports(1)[0]
    spec = {
        "dicomweb": f"dicomweb+http://127.0.0.1:{port}/dicom-web?PatientID=DEV",
        "dimse": f"dimse://ORTHANC@127.0.0.1:{port}?PatientID=DEV",
        "xnat": f"xnat+http://127.0.0.1:{port}/P/S/E",
    }[kind]
    started = time.perf_counter()
    with (
        caplog.at_level(logging.INFO, logger="packager.sources.remote"),
        pytest.raises(InputError, match=f"cannot reach 127.0.0.1:{port} after 3 attempts"),
    ):
        fetch(spec, staging, retry=FAST)
    assert time.perf_counter() - started >= 0.1 + 0.2  # the backoff waits happened
    assert "attempt 2 of 3 failed" in caplog.text


def test_unknown_calling_aet_is_rejected(orthanc, staging) -> None:
    with pytest.raises(InputError, match=r"association rejected .* calling AE title"):
        fetch(f"{orthanc.dimse_spec}?PatientID=DEV&calling=STRANGER", staging, retry=FAST)


@pytest.mark.parametrize("method", ["dicomweb", "cget"])
def test_server_killed_mid_transfer_then_resumed(orthanc_factory, orthanc_login, staging, method) -> None:
    server = orthanc_factory()
    assert server.upload(sorted(SAMPLE_STUDY.rglob("*.dcm"))) == 301
    spec, kwargs = spec_for(server, method, f"StudyInstanceUID={study_uid(SAMPLE_STUDY)}")
    progress = Progress(at=50, action=server.kill)
    with pytest.raises(InputError, match=r"cannot reach .* after 3 attempts.*rerun"):
        fetch(spec, staging, progress=progress, retry=FAST, **kwargs)
    assert not server.alive()
    staged = progress.done
    assert 50 <= staged < 300
    # Same storage, same ports: the rerun downloads only what is missing.
    server = orthanc_factory(ports=(server.http_port, server.dicom_port, server.scu_port), workdir=server.workdir)
    progress = Progress()
    result = fetch(spec, staging, progress=progress, **kwargs)
    assert progress.total == progress.done == 300 - staged
    assert_identical(result, originals(SAMPLE_STUDY), whole_file=method == "dicomweb")


def test_xnat_transient_errors_are_retried(xnat, xnat_login, staging) -> None:
    xnat.fail(r"/scans/2/resources/DICOM/files\?format=zip", 503, times=2)
    result = fetch(xnat.spec(xnat.experiments[0]), staging, retry=FAST)
    assert len(result.files) == 300
    zips = [p for p, q in xnat.requests if "/scans/2/" in p and q == "format=zip"]
    assert len(zips) == 3  # two 503 answers, then success


def test_xnat_failed_series_named_others_kept(xnat, xnat_login, staging) -> None:
    xnat.fail(r"/scans/2/resources/DICOM/files\?format=zip", 500)
    with pytest.raises(InputError, match=r"^xnat: 1 of 7 series failed \(series 2\) .*resume"):
        fetch(xnat.spec(xnat.experiments[0]), staging, retry=FAST)
    xnat.clear()  # the server recovers
    progress = Progress()
    result = fetch(xnat.spec(xnat.experiments[0]), staging, progress=progress)
    assert progress.total == 68  # only the failed series (anat-T1w, 68 files) is fetched again
    assert_identical(result, originals(SAMPLE_STUDY), whole_file=True)


# --------------------------------------------------------------------------------------------
# 5: resume
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [*METHODS, "xnat"])
def test_second_fetch_downloads_nothing(orthanc, xnat, staging, monkeypatch, method) -> None:
    if method == "xnat":
        monkeypatch.setenv("DCMPACK_USER", XNAT_USER)
        monkeypatch.setenv("DCMPACK_PASSWORD", XNAT_PASSWORD)
        spec, kwargs = xnat.spec(xnat.experiments[0]), {}
    else:
        monkeypatch.setenv("DCMPACK_USER", ORTHANC_USER)
        monkeypatch.setenv("DCMPACK_PASSWORD", ORTHANC_PASSWORD)
        spec, kwargs = spec_for(orthanc, method, f"StudyInstanceUID={study_uid(SAMPLE_STUDY)}")
    first = fetch(spec, staging, **kwargs)
    before = snapshot(first)
    xnat.clear()
    progress = Progress()
    second = fetch(spec, staging, progress=progress, **kwargs)
    assert progress.calls == [(0, 0)]
    assert second == first and snapshot(second) == before
    if method == "xnat":  # listings only: no zip, no file download
        assert all(q == "format=json" for _, q in xnat.requests)


@pytest.mark.parametrize("method", ["dicomweb", "cget", "xnat"])
def test_partial_resume_fetches_only_missing(orthanc, xnat, staging, monkeypatch, method) -> None:
    if method == "xnat":
        monkeypatch.setenv("DCMPACK_USER", XNAT_USER)
        monkeypatch.setenv("DCMPACK_PASSWORD", XNAT_PASSWORD)
        spec, kwargs = xnat.spec(xnat.experiments[0]), {}
    else:
        monkeypatch.setenv("DCMPACK_USER", ORTHANC_USER)
        monkeypatch.setenv("DCMPACK_PASSWORD", ORTHANC_PASSWORD)
        spec, kwargs = spec_for(orthanc, method, f"StudyInstanceUID={study_uid(SAMPLE_STUDY)}")
    first = fetch(spec, staging, **kwargs)
    damaged = first.files[::75]  # 4 files in different series
    for source in damaged[:-1]:
        source.path.unlink()
    with open(damaged[-1].path, "r+b") as handle:  # a truncated file is not "staged"
        handle.truncate(1000)
    progress = Progress()
    result = fetch(spec, staging, progress=progress, **kwargs)
    assert progress.total == progress.done == len(damaged) == 4
    assert_identical(result, originals(SAMPLE_STUDY), whole_file=method != "cget")


# --------------------------------------------------------------------------------------------
# WADO-RS multipart decoding (ours: dicomweb-client only returns parsed data sets)
# --------------------------------------------------------------------------------------------


class _Body:
    """A response-like object yielding ``data`` in chunks of ``size`` bytes."""

    def __init__(self, data: bytes, size: int) -> None:
        self.headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary="XyZ"'}
        self.data, self.size = data, size

    def iter_content(self, chunk_size: int):  # requests' signature; size fixed above
        return (self.data[i : i + self.size] for i in range(0, len(self.data), self.size))


def test_multipart_parts_survive_any_chunking() -> None:
    # Parts that look like delimiters or closings, an empty part; every chunk size, so every
    # delimiter and the closing "--" straddle a chunk boundary somewhere.
    parts = [b"A" * 50, b"\r\n--notXyZ\r\n" + b"B" * 7, b"", b"C--"]
    body = (
        b"preamble\r\n"
        + b"".join(b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts)
        + b"--XyZ--\r\nepilogue"
    )
    for size in range(1, len(body) + 1):
        assert [data for _, data in _iter_parts(_Body(body, size))] == parts
    with pytest.raises(Transient, match="ended early"):  # a cut connection is not success
        list(_iter_parts(_Body(body[:-15], 7)))


# --------------------------------------------------------------------------------------------
# PHI hygiene: logs, labels and relpaths carry no identifiers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [*METHODS, "xnat"])
def test_no_identifiers_in_logs_or_relpaths(orthanc, xnat, staging, monkeypatch, caplog, method) -> None:
    user, password = (XNAT_USER, XNAT_PASSWORD) if method == "xnat" else (ORTHANC_USER, ORTHANC_PASSWORD)
    monkeypatch.setenv("DCMPACK_USER", user)
    monkeypatch.setenv("DCMPACK_PASSWORD", password)
    if method == "xnat":
        spec, kwargs = xnat.spec(xnat.experiments[0]), {}
    else:
        spec, kwargs = spec_for(orthanc, method, "PatientID=SYNPT0001")
    with caplog.at_level(logging.DEBUG):  # everything, library loggers included
        result = fetch(spec, staging, **kwargs)
    assert len(result.files) >= 300
    expected = originals(SAMPLE_STUDY)
    secrets = [password, "SYNPT0001", "ZZPHI", study_uid(SAMPLE_STUDY), *list(expected)[:20]]
    text = caplog.text + "\n".join(f.relpath for f in result.files) + result.label
    for secret in secrets:
        assert secret not in text
    assert all(len(f.relpath.split("/")) == 2 for f in result.files)
