"""Bad input: one clear line, the documented exit code, no traceback, nothing left behind."""

from __future__ import annotations

import functools
import json
import os
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

import pytest
from bad_inputs import make as make_fixture
from conftest import REPO, leftovers, run_cli, spawn_cli

SAMPLE = REPO / "sample_data" / "dicom"


def _first_series(tmp_path: Path) -> Path:
    folder = tmp_path / "series"
    source = next(p for p in sorted(SAMPLE.glob("*/*")) if p.name.endswith("anat-T1w"))
    shutil.copytree(source, folder)
    return folder


def _build(source: Path | str, out: Path, key_file: Path, *extra: str):
    return run_cli("build", str(source), "-o", str(out), "--key-file", str(key_file), *extra)


def _assert_clean_failure(proc, out: Path, code: int, pattern: str):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert pattern in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr
    assert leftovers(out) == []


def test_empty_folder(tmp_path, key_file):
    (tmp_path / "empty").mkdir()
    proc = _build(tmp_path / "empty", tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "no DICOM files found")


def test_folder_of_non_dicom_files(tmp_path, key_file):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    proc = _build(folder, tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "no DICOM files found (2 other file(s) skipped)")


def test_truncated_dicom(tmp_path, key_file):
    folder = _first_series(tmp_path)
    victim = sorted(folder.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:-1000])
    proc = _build(folder, tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "truncated")
    assert victim.name in proc.stderr.splitlines()[-1]


def test_truncated_header(tmp_path, key_file):
    folder = _first_series(tmp_path)
    victim = sorted(folder.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:400])
    proc = _build(folder, tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "corrupt or truncated")


@pytest.mark.parametrize("member", ["../evil.dcm", "/abs/evil.dcm", "a/../../evil.dcm"])
def test_zip_slip(tmp_path, key_file, member):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("ok/one.dcm", b"x")
        handle.writestr(member, b"x")
    proc = _build(archive, tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "unsafe path")
    assert not (tmp_path / "evil.dcm").exists()


def test_missing_source(tmp_path, key_file):
    proc = _build(tmp_path / "nope", tmp_path / "out", key_file)
    _assert_clean_failure(proc, tmp_path / "out", 3, "no such file or folder")


def test_no_key_refused(tmp_path):
    folder = _first_series(tmp_path)
    proc = run_cli("build", str(folder), "-o", str(tmp_path / "out"), env={"DCMPACK_KEY": ""})
    assert proc.returncode == 2
    assert "no pseudonym key" in proc.stderr and "Traceback" not in proc.stderr
    assert leftovers(tmp_path / "out") == []


def test_zip_source_builds(tmp_path, key_file):
    """A zip of a ReproIn-named series builds like the folder (member names never reach outputs)."""
    folder = _first_series(tmp_path)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.iterdir()):
            handle.write(path, f"ZZPHIDOE_JANE/anat-T1w/{path.name}")
    proc = _build(archive, tmp_path / "out", key_file)
    assert proc.returncode == 0, proc.stderr
    bundle = next((tmp_path / "out").glob("*.zip"))
    with zipfile.ZipFile(bundle) as handle:
        assert any(n.endswith("_T1w.nii.gz") for n in handle.namelist())
        assert not any("ZZPHI" in n for n in handle.namelist())


def test_existing_bundle_needs_force(tmp_path, key_file):
    folder = _first_series(tmp_path)
    out = tmp_path / "out"
    assert _build(folder, out, key_file).returncode == 0
    before = next(out.glob("*.zip")).read_bytes()
    proc = _build(folder, out, key_file)
    assert proc.returncode == 6 and "--force" in proc.stderr
    assert next(out.glob("*.zip")).read_bytes() == before
    assert _build(folder, out, key_file, "--force").returncode == 0


# ====================================================================== one fixture per failure mode
# Fixtures come from tests/bad_inputs.py (one per failure mode, named after it). The rule
# (docs/commands.md, exit codes): a problem with the *input as a whole* (nothing readable, an
# unsafe archive) stops the build with exit 3 before anything is converted; a damaged *file*
# (unreadable, truncated, empty, implausible) leaves out the series it belongs to, and one that
# belongs to no series we can name is listed (exit 1; ``--strict``: exit 3 for any damaged file);
# a problem confined to one *series* (its geometry, pixel data, decoder) excludes that series with
# a reason and the build goes on (exit 1, the bundle holds the rest) -- unless nothing is left to
# convert, which is exit 3 naming the first failure. Nothing is ever published on a non-0/1 exit,
# and no staging folder is left behind in any case.


VICTIM_RUN = "_dir-AP_epi.nii.gz"  # the broken series of per-series fixtures (series 1, no. 3)
GOOD_RUN = "_dir-PA_epi.nii.gz"  # its healthy companion (series 2, no. 4)
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def _fixture_build(tmp_path, key_file, name, *extra, run=run_cli):
    source = make_fixture(name, tmp_path / "in")
    out = tmp_path / "out"
    return run("build", str(source), "-o", str(out), "--key-file", str(key_file), "--jobs", "1", *extra), out


def _members(out: Path) -> list[str]:
    with zipfile.ZipFile(next(out.glob("*.zip"))) as archive:
        return archive.namelist()


def _assert_built(proc, out: Path, code: int = 0):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert leftovers(out) == ["dataset-1.0.0.zip", "report.html"], leftovers(out)


def _assert_series_excluded(proc, out: Path, pattern: str):
    """Exit 1: the last line names the broken series and why; the bundle holds only the good one."""
    _assert_built(proc, out, code=1)
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: series 1 (no. 3) not converted: "), last
    assert pattern in last, last
    members = _members(out)
    assert any(m.endswith(GOOD_RUN) for m in members)
    assert not any(m.endswith(VICTIM_RUN) for m in members)


# ---------------------------------------------------------------- whole input: exit 3


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("empty_dir", "input: no DICOM files found (0 other file(s) skipped)"),
        ("only_non_dicom", "input: no DICOM files found (2 other file(s) skipped)"),
        ("truncated_pixels", "04_fmap-epi_dir-PA/IM0006.dcm: truncated DICOM file (pixel data"),
        ("truncated_header", "04_fmap-epi_dir-PA/IM0001.dcm: corrupt or truncated DICOM header"),
        ("zero_byte", "04_fmap-epi_dir-PA/IM0007.dcm: empty file (0 bytes; an interrupted copy?)"),
        ("gzip_truncated", "04_fmap-epi_dir-PA/IM0003.dcm.gz: corrupt or truncated DICOM header (EOFError)"),
        ("gzip_corrupt", "04_fmap-epi_dir-PA/IM0003.dcm.gz: corrupt gzip stream (a damaged copy?)"),
        ("huge_dimensions", "04_fmap-epi_dir-PA/IM0004.dcm: implausible image size (7999.8 GiB"),
        ("huge_dimensions_compressed", "04_fmap-epi_dir-PA/IM0001.dcm: implausible image size (8.0 GiB"),
        ("zip_traversal", "zip_traversal.zip: member 13 has an unsafe path (absolute or '..')"),
        ("zip_absolute", "zip_absolute.zip: member 13 has an unsafe path (absolute or '..')"),
        ("zip_symlink", "zip_symlink.zip: member 13 is a symbolic link"),
        (
            "missing_pixel_data_only",
            "nothing to release: all 1 series were excluded; first: series 1 (no. 3): no pixel data",
        ),
    ],
)
def test_input_refused(tmp_path, key_file, name, pattern):
    proc, out = _fixture_build(tmp_path, key_file, name)
    _assert_clean_failure(proc, out, 3, pattern)
    assert not (tmp_path / "evil.dcm").exists() and not Path("/tmp/evil.dcm").exists()


def test_huge_dimensions_allocate_nothing(tmp_path, key_file):
    """Rows = Columns = 65535 with heap memory capped at 2 GiB: refused from the header, nothing allocated.

    RLIMIT_DATA (private writable memory) rather than RLIMIT_AS: bids-validator-deno reserves a
    large address space it never touches. Under the cap an 8 GiB array raises MemoryError.
    """
    source = make_fixture("huge_dimensions_compressed", tmp_path / "in")
    limit = 2 << 30

    def cap():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "packager",
        "build",
        str(source),
        "-o",
        str(tmp_path / "out"),
        "--key-file",
        str(key_file),
        "--jobs",
        "1",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, preexec_fn=cap, timeout=300)
    _assert_clean_failure(proc, tmp_path / "out", 3, "implausible image size")
    # the same limit is ample for a real build: the cap does not make every build fail
    proc = subprocess.run(
        command[:4] + [str(make_fixture("gzip_dicom", tmp_path / "ok")), "-o", str(tmp_path / "ok-out")] + command[7:],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        preexec_fn=cap,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- one series: exit 1, the rest builds


def test_identical_copies_of_instances_are_left_out(tmp_path, key_file):
    """A series exported twice (every file beside its "(copy)") converts once, and the report says so."""
    proc, out = _fixture_build(tmp_path, key_file, "duplicate_instances")
    _assert_built(proc, out)
    members = _members(out)
    assert any(m.endswith(GOOD_RUN) for m in members) and any(m.endswith(VICTIM_RUN) for m in members)
    assert "identical copy/copies of files already read left out" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("missing_pixel_data", "no pixel data"),
        ("missing_geometry", "no usable ImagePositionPatient/ImageOrientationPatient"),
        ("inconsistent_spacing", "uneven slice spacing"),
        ("high_bit", "HighBit is not BitsStored - 1 (stored values not in the low bits)"),
        ("mixed_matrix", "mixed matrix sizes in one series (16x16, 32x32)"),
        ("conflicting_duplicates", "conflicting instances: two files with one SOPInstanceUID and different contents"),
        (
            "undecodable_syntax",
            "MPEG2 Main Profile / Main Level pixel data: no decoder exists for this transfer syntax",
        ),
    ],
)
def test_series_excluded(tmp_path, key_file, name, pattern):
    proc, out = _fixture_build(tmp_path, key_file, name)
    _assert_series_excluded(proc, out, pattern)
    report = (out / "report.html").read_text()
    assert pattern.split(" (")[0] in report  # the reason is in the private report too
    # plan predicts it (issue 20): the same series refused with the same reason, nothing converted
    planned = run_cli("plan", str(tmp_path / "in" / name), "--key-file", str(key_file), "--json")
    assert planned.returncode == 0, planned.stderr
    rows = {row["series"]: row for row in json.loads(planned.stdout)}
    assert rows[1]["decision"] == "exclude" and rows[1]["error"] and pattern in rows[1]["why"], rows[1]
    assert [row["path"] for row in rows.values() if row["decision"] == "convert"][0].endswith(GOOD_RUN)


def test_missing_decoder_names_the_plugin(tmp_path, key_file):
    """JPEG 2000 with every decoder plugin hidden (import fails as if not installed): exit 1, what to install."""
    blocked = tmp_path / "no-decoders"
    for module in ("pylibjpeg", "openjpeg", "libjpeg", "PIL", "jpeg_ls", "pyjpegls", "rle"):
        (blocked / module).mkdir(parents=True)
        (blocked / module / "__init__.py").write_text("raise ModuleNotFoundError('hidden by the test')\n")
    (blocked / "gdcm.py").write_text("raise ModuleNotFoundError('hidden by the test')\n")
    env = {"PYTHONPATH": f"{blocked}{os.pathsep}{REPO}"}  # a new process: this one has imported them
    proc, out = _fixture_build(tmp_path, key_file, "jpeg2000", run=functools.partial(spawn_cli, env=env))
    _assert_series_excluded(
        proc,
        out,
        "JPEG 2000 Image Compression (Lossless Only) pixel data and no decoder "
        "installed: pip install pylibjpeg pylibjpeg-openjpeg (or python-gdcm",
    )
    # with the decoders installed (this venv) the same fixture builds completely
    shutil.rmtree(out)
    proc, out = _fixture_build(tmp_path / "again", key_file, "jpeg2000")
    _assert_built(proc, out)
    assert any(m.endswith(VICTIM_RUN) for m in _members(out))


def test_damaged_files_leave_out_their_series(tmp_path, key_file):
    """Issue 19: a truncated file (its header names the series), a zero-byte file (its folder holds one
    series) and a zero-byte file beside no series: exit 1, those two series left out and named, the
    third file listed, the healthy series published; ``plan`` says the same before anything converts."""
    source = make_fixture("damaged_among_good", tmp_path / "in")
    planned = run_cli("plan", str(source), "--key-file", str(key_file), "--json")
    assert planned.returncode == 0, planned.stderr
    decisions = {row["number"]: (row["decision"], row.get("reason")) for row in json.loads(planned.stdout)}
    assert decisions == {2: ("exclude", "damaged"), 3: ("exclude", "damaged"), 4: ("convert", None)}

    out = tmp_path / "out"
    proc = run_cli("build", str(source), "-o", str(out), "--key-file", str(key_file), "--jobs", "1")
    _assert_built(proc, out, code=1)
    members = _members(out)
    assert any(m.endswith(GOOD_RUN) for m in members)
    assert not any(m.endswith((VICTIM_RUN, "_T1w.nii.gz")) for m in members)  # nothing damaged published
    assert "series 1 (no. 2): not converted: 02_anat-T1w/IM0004.dcm: empty file (0 bytes" in proc.stderr
    assert "series 2 (no. 3): not converted: 03_fmap-epi_dir-AP/IM0006.dcm: truncated DICOM file" in proc.stderr
    assert "IM9999.dcm: empty file (0 bytes; an interrupted copy?)" in proc.stderr
    assert "not attributable to a series" in proc.stderr
    report = (out / "report.html").read_text()
    assert "03_fmap-epi_dir-AP/IM0006.dcm" in report and "IM9999.dcm" in report

    strict = run_cli("build", str(source), "-o", str(tmp_path / "strict"), "--key-file", str(key_file), "--strict")
    _assert_clean_failure(strict, tmp_path / "strict", 3, "02_anat-T1w/IM0004.dcm: empty file (0 bytes")


# ---------------------------------------------------------------- inputs that build (exit 0)


def test_gzip_dicom_builds(tmp_path, key_file):
    proc, out = _fixture_build(tmp_path, key_file, "gzip_dicom")
    _assert_built(proc, out)
    assert any(m.endswith(GOOD_RUN) for m in _members(out))


def test_non_dicom_files_skipped_and_counted(tmp_path, key_file):
    proc, out = _fixture_build(tmp_path, key_file, "non_dicom_mixed")
    _assert_built(proc, out)
    assert "  skipped    3 non-DICOM file(s)" in proc.stderr


def test_symlink_loop_skipped_with_warning(tmp_path, key_file):
    proc, out = _fixture_build(tmp_path, key_file, "symlink_loop")
    _assert_built(proc, out)
    assert "warning: input: skipped 2 symlink loop(s) or dangling link(s)" in proc.stderr
    assert any(m.endswith(GOOD_RUN) for m in _members(out))


# ---------------------------------------------------------------- permissions, run as an unprivileged user
# Tests run as root, for whom chmod 000 blocks nothing: these builds run as "nobody" (setpriv), in a
# world-readable temporary folder, so the kernel really refuses the reads and writes. Nobody may
# not reach this checkout or this interpreter (a 0700 home folder, pyenv under /root): it sees them
# through bind mounts in a private mount namespace (``_nobody_view``), the same files, nothing copied.


@pytest.fixture
def shared_tmp(key_file):
    folder = Path(tempfile.mkdtemp(prefix="dcmpack-nobody-", dir="/tmp"))
    os.chmod(folder, 0o755)
    key = folder / "release.key"
    shutil.copyfile(key_file, key)
    os.chown(key, 65534, 65534)  # nobody's own key, private to it (a key others can read is refused)
    os.chmod(key, 0o600)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _nobody_view(view: Path) -> tuple[list[tuple[Path, Path]], Path]:
    """Bind mounts (source, mount point) that show this interpreter, its venv's site-packages and
    the checkout under ``view`` (world-readable), and the interpreter to run there.

    A venv is rebuilt around the mounted site-packages (``pyvenv.cfg`` pointing at the mounted
    interpreter), so site-packages and its .pth files behave as in the real one.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix).resolve()
    mounts = [(base, view / "python"), (REPO, view / "repo")]
    python = view / "python" / "bin" / version
    if sys.prefix != sys.base_prefix:
        venv = view / "venv"
        site_packages = Path(sysconfig.get_path("purelib")).resolve()
        mounts.append((site_packages, venv / "lib" / version / "site-packages"))
        (venv / "bin").mkdir(parents=True)
        lines = (line.partition("=") for line in (Path(sys.prefix) / "pyvenv.cfg").read_text().splitlines())
        settings = {key.strip(): value.strip() for key, equals, value in lines if equals}
        (venv / "pyvenv.cfg").write_text(
            f"home = {python.parent}\ninclude-system-site-packages = "
            f"{settings.get('include-system-site-packages', 'false')}\n"
        )
        (venv / "bin" / "python").symlink_to(python)
        python = venv / "bin" / "python"
    for _, target in mounts:
        target.mkdir(parents=True)
    return mounts, python


def _as_nobody(*args: str) -> subprocess.CompletedProcess:
    """``python -m packager ARGS`` as user nobody, with this interpreter and checkout (see above)."""
    for tool in ("setpriv", "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} (util-linux) is needed to test permissions as an unprivileged user")
    view = Path(tempfile.mkdtemp(prefix="dcmpack-nobody-view-", dir="/tmp"))
    try:
        os.chmod(view, 0o755)
        mounts, python = _nobody_view(view)
        steps = [
            f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(target))} || exit 99"
            for source, target in mounts
        ]
        # nobody must import this checkout's package, not one it happens to reach elsewhere
        where = shlex.join(
            [*NOBODY, str(python), "-c", "import importlib.util as u; print(u.find_spec('packager').origin)"]
        )
        steps += [
            f"cd {shlex.quote(str(view / 'repo'))}",
            f'[ "$({where})" = {shlex.quote(str(view / "repo" / "packager" / "__init__.py"))} ] || exit 98',
            shlex.join([*NOBODY, str(python), "-m", "packager", *args]),
        ]
        libraries = os.pathsep.join(filter(None, [str(view / "python" / "lib"), os.environ.get("LD_LIBRARY_PATH")]))
        # LD_LIBRARY_PATH: libpython, when the interpreter's RPATH is out of nobody's reach
        env = dict(os.environ, PYTHONPATH=str(view / "repo"), HOME="/tmp", LD_LIBRARY_PATH=libraries)
        proc = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(steps)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode != 99, f"cannot bind-mount here (needs root): {proc.stderr}"
        assert proc.returncode != 98, f"user nobody does not import this checkout's packager: {proc.stderr}"
        return proc
    finally:  # the mounts lived in the namespace only: these are empty folders now
        shutil.rmtree(view, ignore_errors=True)


def _writable_out(folder: Path) -> Path:
    out = folder / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    return out


def test_unreadable_file(shared_tmp):
    source = make_fixture("gzip_dicom", shared_tmp / "in")
    victim = sorted((source / "04_fmap-epi_dir-PA").iterdir())[2]
    os.chmod(victim, 0o000)
    out = _writable_out(shared_tmp)
    proc = _as_nobody("build", str(source), "-o", str(out), "--key-file", str(shared_tmp / "release.key"))
    # the only series is left out for its unreadable file: nothing left, exit 3 naming the file
    _assert_clean_failure(proc, out, 3, f"04_fmap-epi_dir-PA/{victim.name}: not readable (permission denied)")


def test_unreadable_folder(shared_tmp):
    source = make_fixture("gzip_dicom", shared_tmp / "in")
    os.chmod(source / "04_fmap-epi_dir-PA", 0o000)
    out = _writable_out(shared_tmp)
    proc = _as_nobody("build", str(source), "-o", str(out), "--key-file", str(shared_tmp / "release.key"))
    _assert_clean_failure(proc, out, 3, "input: 04_fmap-epi_dir-PA: folder not readable (permission denied)")


def test_output_not_writable(shared_tmp):
    source = make_fixture("gzip_dicom", shared_tmp / "in")
    out = shared_tmp / "out"
    out.mkdir(mode=0o755)  # root's folder: nobody may not write here
    proc = _as_nobody("build", str(source), "-o", str(out), "--key-file", str(shared_tmp / "release.key"))
    _assert_clean_failure(proc, out, 6, f"output: {out}: folder not writable")


def test_output_under_a_file(tmp_path, key_file):
    (tmp_path / "file").write_text("x")
    proc = _build(_first_series(tmp_path), tmp_path / "file" / "out", key_file)
    assert proc.returncode == 6 and "cannot create folder (ENOTDIR)" in proc.stderr.splitlines()[-1], proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- full and read-only disks (real mounts)
# As root, a private mount namespace (unshare -m) can mount a real tmpfs of a given size.


def _in_mount_namespace(tmp_path, key_file, size: str, read_only: bool = False, name: str = "gzip_dicom"):
    """Build ``name`` into OUT on a fresh tmpfs of ``size`` (read-only after creating OUT if asked).

    The last stdout line lists what the build left in OUT (seen from inside the namespace).
    """
    source = make_fixture(name, tmp_path / "in")
    mount, out = tmp_path / "mnt", tmp_path / "mnt" / "out"
    mount.mkdir()
    build = f"{sys.executable} -m packager build {source} -o {out} --key-file {key_file} --jobs 1"
    steps = [f"mount -t tmpfs -o size={size} dcmpack-test {mount} || exit 99", f"mkdir {out}"]
    if read_only:
        steps.append(f"mount -o remount,ro {mount} || exit 99")
    steps += [build + "; code=$?", f"echo \"left: $(ls -A {out} | tr '\\n' ' ')\"", "exit $code"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(steps)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 99, f"cannot mount a tmpfs here (needs root): {proc.stderr}"
    return proc


def test_disk_full_during_write(tmp_path, key_file):
    proc = _in_mount_namespace(tmp_path, key_file, "24k")
    assert proc.returncode == 6, proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: output: ") and "disk full (no space left on device) while building" in last, last
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "left:", proc.stdout  # no bundle, no staging, no report


def test_read_only_output(tmp_path, key_file):
    proc = _in_mount_namespace(tmp_path, key_file, "1m", read_only=True)
    assert proc.returncode == 6, proc.stderr
    assert "folder not writable" in proc.stderr.splitlines()[-1]
    assert proc.stdout.strip().splitlines()[-1] == "left:", proc.stdout


# ---------------------------------------------------------------- interrupted builds


@pytest.mark.parametrize("how", ["SIGINT to the process group (Ctrl-C)", "SIGTERM to the process"])
def test_interrupted_build_leaves_nothing(tmp_path, how):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # As from a user's shell, SIGINT at its default, also when this test run ignores it (a
    # background job of a script does: the build would rightly run on, as under nohup).
    proc = subprocess.Popen(
        [sys.executable, "-m", "packager", "build", "-o", str(out), "--jobs", "2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    for line in proc.stderr:  # plain progress lines: interrupt once conversion is under way
        seen.append(line)
        if line.startswith("converting series"):
            break
    staging = list(out.glob(".dcmpack-staging-*"))
    assert len(staging) == 1, "no staging folder while converting"
    assert stat.S_IMODE(staging[0].stat().st_mode) == 0o700  # private, inside the output folder
    if how.startswith("SIGINT"):
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        _, rest = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("build did not stop within 60 s of the signal")
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted: staging removed, nothing published"
    assert "Traceback" not in stderr
    assert leftovers(out) == []


# ---------------------------------------------------------------- configuration and key: exit 2


@pytest.mark.parametrize(
    "name, patterns",
    [
        ("config_syntax_error", ("error: release.toml: invalid TOML (", "(at line 3, column ")),
        ("config_unknown_key", ('release.toml:5 [deid] "date": unknown key (did you mean "dates"?)',)),
        ("config_wrong_type", ('release.toml:4 [exclude] "localizers": must be true or false',)),
    ],
)
def test_invalid_release_toml(tmp_path, key_file, name, patterns):
    """The line (and for a bad key, the table and key) is named."""
    config = make_fixture(name, tmp_path / "in")
    folder = _first_series(tmp_path)
    proc = run_cli("build", str(folder), "-c", str(config), "-o", str(tmp_path / "out"), "--key-file", str(key_file))
    for pattern in patterns:
        _assert_clean_failure(proc, tmp_path / "out", 2, pattern)


def test_missing_key_file(tmp_path):
    folder = _first_series(tmp_path)
    proc = run_cli("build", str(folder), "-o", str(tmp_path / "out"), "--key-file", str(tmp_path / "nope.key"))
    _assert_clean_failure(proc, tmp_path / "out", 2, f"key file not found: {tmp_path / 'nope.key'}")


def test_key_file_from_config_missing(tmp_path):
    folder = _first_series(tmp_path)
    config = tmp_path / "release.toml"
    config.write_text('[dataset]\nname = "study"\n[deid]\nkey_file = "secret/release.key"\n')
    proc = run_cli("build", str(folder), "-c", str(config), "-o", str(tmp_path / "out"), env={"DCMPACK_KEY": ""})
    _assert_clean_failure(proc, tmp_path / "out", 2, "key file not found: ")
    assert "secret/release.key" in proc.stderr.splitlines()[-1]


def test_traceback_only_with_verbose(tmp_path, key_file):
    proc, _ = _fixture_build(tmp_path, key_file, "truncated_header")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    proc, out = _fixture_build(tmp_path / "v", key_file, "truncated_header", "--verbose")
    assert proc.returncode == 3
    assert proc.stderr.splitlines()[-1].startswith("error: input: ")
    assert leftovers(out) == []
