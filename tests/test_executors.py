"""Executors: the bundle does not depend on where or in how many processes series are converted.

One process, a local pool of two and a Dask cluster of two worker processes build the same
synthetic ReproIn session (benchmarks/synthetic.py: 2 anat + 2 func series) into byte-identical
bundles. Plus the ``--executor`` grammar, and ``executors.run``'s ordering and error contract.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from benchmarks import synthetic
from packager import api, executors
from packager.config import DefaceConfig, ReleaseConfig, merge_flags, parse_executor
from packager.errors import ConfigError


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    return synthetic.make_session(tmp_path_factory.mktemp("synthetic") / "session", series=4, images=60, matrix=64)


def _build(session: Path, out: Path, key_file: Path, **flags) -> bytes:
    # The synthetic "T1w" are not heads (defacing refuses them): this test is about executors and
    # opts out; tests/test_deface.py builds heads with defacing on across the same executors.
    config = merge_flags(
        ReleaseConfig(deface=DefaceConfig(enabled=False, reason="test: synthetic images are not heads")),
        sources=(str(session),),
        output=out,
        key_file=str(key_file),
        force=True,
        **flags,
    )
    result = api.build(config)
    assert result.exit_code == 0, result.excluded
    assert len(result.runs) == 4
    return result.bundle.read_bytes()


@pytest.fixture(scope="module")
def local_bundle(session, key_file, tmp_path_factory) -> bytes:
    return _build(session, tmp_path_factory.mktemp("jobs1"), key_file, jobs=1)


def test_jobs_1_and_2_give_identical_bundles(session, key_file, local_bundle, tmp_path):
    assert _build(session, tmp_path, key_file, jobs=2) == local_bundle


def test_dask_executor_gives_the_local_bundle(session, key_file, local_bundle, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        port = int(cluster.scheduler_address.rsplit(":", 1)[1])
        bundle = _build(session, tmp_path, key_file, executor=f"dask://127.0.0.1:{port}")
        # every series task ran to completion on the cluster (one per planned series)
        ran = {
            entry[0]
            for entry in cluster.scheduler.transition_log
            if str(entry[0]).startswith("dcmpack-") and entry[2] == "memory"
        }
        cache = tmp_path / "cache"  # through the build cache too: the workers share this filesystem
        for out in ("cold", "warm"):
            cached = _build(session, tmp_path / out, key_file, executor=f"dask://127.0.0.1:{port}", cache=cache)
            assert cached == local_bundle
        assert sum(p.is_file() for p in (cache / "tasks").rglob("*")) == 4
    assert bundle == local_bundle
    assert len(ran) == 4


def test_unreachable_dask_scheduler_is_a_config_error(session, key_file, tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", 2)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = merge_flags(
        ReleaseConfig(),
        sources=(str(session),),
        output=tmp_path,
        key_file=str(key_file),
        executor=f"dask://127.0.0.1:{port}",
    )
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler") as caught:
        api.build(config)
    assert caught.value.exit_code == 2
    assert not any(p.name.startswith(".dcmpack-staging") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    "spec, address",
    [
        ("local", None),
        ("dask://127.0.0.1:8786", "tcp://127.0.0.1:8786"),
        ("dask://scheduler.example.org:8786", "tcp://scheduler.example.org:8786"),
        ("dask://[::1]:8786", "tcp://[::1]:8786"),
    ],
)
def test_executor_grammar(spec, address):
    assert parse_executor(spec) == address


@pytest.mark.parametrize(
    "spec",
    ["dask://host", "dask://:8786", "dask://h:0", "dask://h:99999", "tcp://h:8786", "ray://h:1", "dask://h:8786/x"],
)
def test_bad_executor_is_refused_by_merge_flags(spec):
    with pytest.raises(ConfigError, match="--executor") as caught:
        merge_flags(ReleaseConfig(), executor=spec)
    assert caught.value.exit_code == 2


def test_dask_executor_is_accepted_without_connecting():
    config = merge_flags(ReleaseConfig(), executor="dask://127.0.0.1:1")
    assert config.executor == "dask://127.0.0.1:1"


# ---------------------------------------------------------------- executors.run / imap


def _times(item: int, folder: str, scale: int) -> int:
    Path(folder, f"{item}.txt").write_text(str(item * scale))
    return item * scale


def _fails_on_three(item: int, folder: str) -> int:
    if item == 3:
        raise ValueError("task failed")
    return item


def _square(item: int) -> int:
    if item < 0:
        raise ValueError(f"negative {item}")
    return item * item


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_returns_results_in_item_order_whatever_the_cost_order(tmp_path, jobs):
    items = list(range(8))
    results = executors.run(_times, items, tmp_path, (10,), jobs=jobs, cost=lambda i: i)
    assert results == [i * 10 for i in items]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.txt" for i in items)


def test_run_reports_progress_once_per_task(tmp_path):
    seen = []
    executors.run(_times, [1, 2, 3], tmp_path, (1,), jobs=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_task_propagates(tmp_path, jobs):
    with pytest.raises(ValueError, match="task failed"):
        executors.run(_fails_on_three, list(range(6)), tmp_path, jobs=jobs)


@pytest.mark.parametrize("jobs", [1, 2])
def test_imap_keeps_order_and_raises_the_first_failure_in_order(jobs):
    assert list(executors.imap(_square, list(range(20)), jobs=jobs)) == [i * i for i in range(20)]
    with pytest.raises(ValueError, match="negative -1"):
        list(executors.imap(_square, [1, 2, -1, 4, -5], jobs=jobs))


def test_in_scratch_returns_the_files_a_task_wrote():
    result, files = executors.in_scratch(_times, 7, 3)
    assert result == 21
    assert files == (("7.txt", b"21"),)


def _pid(_item) -> int:
    import os

    return os.getpid()


def test_shared_workers_serve_every_step_and_fork_once(tmp_path):
    with executors.Workers(2) as workers:
        workers.start()
        first = set(executors.imap(_pid, list(range(16)), workers=workers))
        assert executors.run(_times, list(range(6)), tmp_path, (2,), workers=workers) == [i * 2 for i in range(6)]
        again = set(executors.imap(_pid, list(range(16)), workers=workers))
        assert first and again <= first | again and len(first | again) <= 2  # the same two processes
        assert list(executors.imap(_square, [3, 4], workers=workers, cost=lambda i: -i)) == [9, 16]


def test_shared_workers_are_stopped_by_a_failure(tmp_path):
    with pytest.raises(ValueError, match="negative -1"):
        with executors.Workers(2) as workers:
            processes = list(workers.start().pool()._processes.values())
            list(executors.imap(_square, [1, -1, 2, 3], workers=workers))
    assert workers._pool is None
    assert len(processes) == 2 and all(not process.is_alive() for process in processes)


def test_one_job_runs_inline():
    import os

    with executors.Workers(1) as workers:
        assert workers.pool() is None
        assert set(executors.imap(_pid, [1, 2, 3], workers=workers)) == {os.getpid()}


def test_a_build_process_skips_the_collection_at_exit():
    """``tune_gc`` leaves the heap to reference counting when the process exits: a garbage
    cycle is collected at exit without it (the control), and not with it."""
    code = (
        "import sys\n"
        "class Cycle:\n"
        "    def __del__(self):\n"
        "        sys.stdout.write('collected')\n"
        "if sys.argv[1] == 'tuned':\n"
        "    from packager.executors import tune_gc\n"
        "    tune_gc()\n"
        "a = Cycle(); a.me = a; del a\n"
    )
    outputs = {}
    for mode in ("tuned", "default"):
        done = subprocess.run([sys.executable, "-c", code, mode], cwd=REPO, capture_output=True, text=True, check=True)
        outputs[mode] = done.stdout
    assert outputs == {"tuned": "", "default": "collected"}
