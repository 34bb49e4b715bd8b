"""A build killed with SIGKILL (the OOM killer, a batch job's time limit) leaves no process behind:
its worker processes notice that their parent is gone and end."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, leftovers

from packager import api
from packager.config import load_config, merge_flags
from packager.errors import OutputError
from packager.release.staging import LOCK_NAME, STAGING_PREFIX

HEURISTIC = REPO / "tests" / "heuristics" / "name_everything.py"


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing bracket
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_of_a_build_leaves_no_worker_running(corpus, key_file, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    build = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "packager",
            "build",
            str(corpus / "dcm_qa_nih" / "In"),
            "-o",
            str(tmp_path / "out"),
            "--key-file",
            str(key_file),
            "--heuristic",
            str(HEURISTIC),
            "--jobs",
            "2",
            "--quiet",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + 120
        while len(workers) < 2 and build.poll() is None and time.monotonic() < deadline:
            workers = {p for p in _children(build.pid) if _alive(p)}
            time.sleep(0.05)
        assert len(workers) >= 2, "the build ended before its two workers were seen"
        build.send_signal(signal.SIGKILL)
        build.wait(timeout=30)
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "workers outlived the killed build"
        # what the killed build left: its private staging folder (and the lock file it held)
        assert list((tmp_path / "out").glob(STAGING_PREFIX + "*"))
        # the next build into the same folder removes it, and leaves only what it publishes
        result = api.build(
            merge_flags(
                load_config(None),
                sources=(str(corpus / "dcm_qa_nih" / "In"),),
                output=tmp_path / "out",
                key_file=str(key_file),
                heuristic=str(HEURISTIC),
                jobs=1,
            )
        )
        assert result.exit_code == 0
        assert leftovers(tmp_path / "out") == ["dataset-1.0.0.zip", "report.html"]
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()


def test_a_second_build_into_the_same_folder_refuses(tmp_path, key_file):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / LOCK_NAME, "w") as held:  # a build running in this folder holds the lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputError, match="another dcmpack build is writing into this folder") as info:
            api.build(api.sample_config(output=out, key_file=str(key_file)))
        assert info.value.exit_code == 6
        assert leftovers(out) == [LOCK_NAME]  # nothing of the refused build, the running one's lock untouched
    result = api.build(api.sample_config(output=out, key_file=str(key_file)))  # once it has ended
    assert result.exit_code == 0 and leftovers(out) == ["dcmpack-sample-1.0.0.zip", "report.html"]
