"""Where the per-series tasks run: a local process pool, or an existing Dask distributed cluster.

A helper, not a stage: it knows nothing about DICOM or BIDS. ``convert.task.run_tasks`` hands it a
task function (``convert.task.convert_task``, a pure function of its arguments), the planned items
and the private dataset folder the task writes into; it returns one result per item, **in the items'
order**, whatever order the workers finished in. That, and the task being pure, is what makes a
bundle byte-identical whether it was built with ``--jobs 1``, ``--jobs 8`` or on a cluster.

``local`` (default)
    A process pool of ``--jobs`` workers (0: the CPUs this process may run on), one series per
    task, biggest series first (so the last task to finish is a small one). Each worker gives
    freed memory back to the OS after every task (glibc ``malloc_trim``), so its resident size
    follows the series it holds now, not the largest it ever held. Workers are forked (set
    ``DCMPACK_SPAWN=1`` to spawn them instead).
``dask://HOST:PORT``
    The tasks run on the Dask distributed scheduler at ``tcp://HOST:PORT``. Workers must read
    the input files at the same paths as this machine (a shared filesystem) and run the same
    versions of dcmpack and its conversion libraries (checked before anything is submitted).
    They never need the output folder: each task writes into a private scratch folder on its
    worker and returns the bytes, which are written into staging here as results arrive, so
    at most the finished-but-unwritten results are held in memory. ``--jobs`` is ignored (the
    cluster decides). No secret is sent: the tasks never see the pseudonym key.

Errors: a task that raises (a bug) stops the run and the exception propagates after the
remaining tasks are cancelled and local workers stopped (nothing keeps writing into a staging
folder the caller is about to remove). An unusable ``--executor`` value is a ``ValueError`` from
``parse`` (``config.merge_flags`` turns it into a ConfigError); an unreachable or mismatched
cluster is a ``ClusterError``.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import ctypes
import gc
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from packager.config import LOCAL_EXECUTOR, parse_executor
from packager.errors import ConfigError

log = logging.getLogger(__name__)

SPAWN_ENV = "DCMPACK_SPAWN"
#: Seconds to wait for a Dask scheduler to answer before giving up.
CONNECT_TIMEOUT = 10
#: The libraries that shape output bytes: their versions must match between this machine and the
#: Dask workers, and they key the build cache (``convert/cached.py``). A new one (a defacer's
#: SimpleITK) is one more name here.
MATCHED_PACKAGES = ("dcmpack", "pydicom", "numpy", "nibabel", "dicom2nifti", "isal", "dcm2niix", "SimpleITK", "scipy")


Done = Callable[[int, int], None]
#: Cyclic-collector thresholds for a build's processes. A build allocates millions of short-lived
#: objects (header elements, mostly in acyclic containers); with the default (700, 10, 10) the
#: collector re-scans every dataset alive in the task again and again (measured: 30 % of the
#: conversion time on the QA corpus). Fewer, bigger collections free the same garbage.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect less often (``GC_THRESHOLDS``); for the CLI process and pool workers, whose heaps
    are the build's (a notebook calling the API keeps its own settings).

    Also skips the collection Python runs as the process exits: ``gc.freeze`` from an ``atexit``
    hook (hooks run before that collection) leaves every object to plain reference counting. That
    collection only walks the heap (the imported libraries and whatever the command kept) to
    find cycles nobody can use any more; it took 0.4 s of a 4 s build of 2,000 small files,
    growing with the heap. Nothing we write depends on it: files are closed by ``with`` blocks,
    and logging and ``weakref.finalize`` flush from their own ``atexit`` hooks.
    """
    global _exit_hook
    gc.set_threshold(*GC_THRESHOLDS)
    if not _exit_hook:
        atexit.register(gc.freeze)
        _exit_hook = True


_exit_hook = False

#: OpenBLAS (numpy's) starts its threads when numpy is imported; an idle one spins 2**28 cycles
#: (~0.1 s) before it sleeps, then again after each threaded call. At a build's start that was
#: ~0.1 CPU s on the other core, which also slowed the importing thread beside it (the start-up
#: to the first header read: ~0.03 s; ``benchmarks/first_read.py``). 2**4 cycles (OpenBLAS's
#: least): an idle thread sleeps at once. Only how long idle threads wait changes, not how work
#: is split among them, so no result does.
BLAS_IDLE = ("OPENBLAS_THREAD_TIMEOUT", "4")


def tune_blas() -> None:
    """Idle BLAS threads sleep at once (``BLAS_IDLE``); for the CLI, before numpy is imported
    (OpenBLAS reads it when loaded; forked and spawned workers inherit it). A value the user set
    is kept."""
    os.environ.setdefault(*BLAS_IDLE)


#: How often a worker checks that the build that started it is still running (seconds).
PARENT_CHECK_S = 0.2


def _worker_init(initializer: Callable[[], None] | None, parent: int) -> None:
    tune_gc()
    _end_with_parent(parent)
    (initializer or quiet_worker_signals)()


def _end_with_parent(parent: int) -> None:
    """End this worker when the build process that forked it is gone.

    A build killed with SIGKILL (the OOM killer, a batch system's time limit) cannot stop its
    pool, and a pool worker waits on its task queue forever: every worker holds a copy of the
    queue's write end, so the read never sees end-of-file. A daemon thread polls the parent's
    pid instead of ``prctl(PR_SET_PDEATHSIG)``, which fires when the *thread* that forked the
    worker exits, not the process (pools may be started from a helper thread).
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="dcmpack-parent-watch", daemon=True).start()


def _pool(workers: int, initializer: Callable[[], None] | None) -> cf.ProcessPoolExecutor:
    """A process pool (forked unless ``DCMPACK_SPAWN``) whose workers run ``_worker_init``.

    Before forking, what the parent holds is frozen out of the collector (``gc.freeze``): the
    children then never touch those objects' headers, so the pages stay shared.
    """
    import multiprocessing

    spawn = bool(os.environ.get(SPAWN_ENV))
    if not spawn:
        gc.freeze()
    context = multiprocessing.get_context("spawn" if spawn else "fork")
    return cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_worker_init, initargs=(initializer, os.getpid())
    )


class Workers:
    """Local worker processes shared by a build's parallel steps (header pass, conversions, QC
    pictures): forked once, so each worker imports what it needs once (dicom2nifti and its SciPy
    cost more than a second a process) and the parent forks nothing else while it runs.

    ``start()`` forks them now; otherwise the first step that needs them does. With one job
    there are no processes: every step runs inline. Use as a context manager: on an exception
    the workers are stopped at once (nothing keeps writing into a staging folder the caller is
    about to remove).
    """

    def __init__(self, jobs: int = 0, initializer: Callable[[], None] | None = None):
        self.size = jobs or cpu_count()
        self._initializer = initializer
        self._pool: cf.ProcessPoolExecutor | None = None

    def pool(self) -> cf.ProcessPoolExecutor | None:
        if self.size <= 1:
            return None
        if self._pool is None:
            self._pool = _pool(self.size, self._initializer)
        return self._pool

    def start(self) -> Workers:
        pool = self.pool()
        if pool is not None:
            pool.submit(os.getpid).result()  # a fork-context pool starts all its processes at once
        return self

    def stop(self) -> None:
        if self._pool is not None:
            _stop(self._pool)
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if self._pool is None:
            return
        if kind is not None:
            self.stop()
        else:
            self._pool.shutdown(wait=True)
            self._pool = None


def _stop(pool: cf.ProcessPoolExecutor) -> None:
    """Kill a pool's processes now and drop what is queued.

    SIGKILL, not SIGTERM: a worker forked a moment ago may still run the build's own SIGTERM
    handler (raise KeyboardInterrupt) until its initializer resets it, and would print a
    traceback instead of ending (seen under load).
    """
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    # Tasks still queued for the killed workers sit in the call queue's pipe; with nobody left to
    # read it, its feeder thread can block on a full pipe and the shutdown below would wait on it
    # forever (seen once under load: the manager thread waiting, the workers defunct). Nothing
    # queued matters any more, so the queue is not flushed (multiprocessing.Queue.cancel_join_thread).
    queue = getattr(pool, "_call_queue", None)
    if queue is not None:
        queue.cancel_join_thread()
    pool.shutdown(wait=True, cancel_futures=True)


class ClusterError(ConfigError):
    """The Dask cluster cannot run this build (unreachable, no workers, mismatched versions)."""


def cpu_count() -> int:
    """CPUs this process may run on (affinity/cgroup-pinned runs included), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run(
    task: Callable[..., Any],
    items: Sequence[Any],
    folder: Path,
    args: tuple = (),
    *,
    executor: str = LOCAL_EXECUTOR,
    jobs: int = 0,
    cost: Callable[[Any], float] | None = None,
    progress: Done | None = None,
    initializer: Callable[[], None] | None = None,
    probe: tuple[str, ...] = (),
    workers: Workers | None = None,
) -> list[Any]:
    """``[task(item, str(folder), *args) for item in items]``, run in parallel, in the items' order.

    Parameters
    ----------
    task : callable
        A module-level (picklable) function ``task(item, folder, *args)`` that writes its files
        under ``folder`` and returns a small result.
    items : sequence
        One per task (picklable).
    folder : Path
        Where the files must end up (the private dataset staging folder).
    args : tuple
        Further arguments, the same for every task.
    executor : str
        ``local`` or ``dask://HOST:PORT`` (see module doc).
    jobs : int
        Local worker processes; 0 means every CPU available. Ignored by Dask.
    cost : callable, optional
        Relative size of an item; bigger items are started first.
    progress : callable, optional
        ``progress(done, total)`` after each finished task.
    initializer : callable, optional
        Run once in each local worker process (e.g. signal handling).
    probe : tuple of str
        A few input paths every Dask worker must be able to read (checked before submitting).
    workers : Workers, optional
        Local processes to run on (instead of a pool of ``jobs`` made for this call).
    """
    address = parse_executor(executor)
    order = _biggest_first(items, cost)
    if address is not None:
        return _run_dask(address, task, items, order, folder, args, progress, probe)
    with _local_pool(len(items), jobs, initializer, workers) as pool:
        if pool is None:
            return _run_inline(task, items, order, folder, args, progress)
        return _run_on(pool, task, items, order, folder, args, progress)


def imap(
    func: Callable[..., Any],
    items: Sequence[Any],
    args: tuple = (),
    *,
    jobs: int = 0,
    initializer: Callable[[], None] | None = None,
    cost: Callable[[Any], float] | None = None,
    workers: Workers | None = None,
) -> Iterator[Any]:
    """``func(item, *args)`` for each item on a local process pool, yielded in the items' order.

    For short, uniform work such as the header pass (always local: it is I/O next to the
    data). With one job or one item it runs inline. Items are started biggest ``cost`` first
    (so no big item is left for last), but an exception raised by the item that comes first in
    order is the one that propagates, as in a serial loop; the pool is stopped then.
    """
    with _local_pool(len(items), jobs, initializer, workers) as pool:
        if pool is None:
            for item in items:
                yield func(item, *args)
            return
        futures: list[Any] = [None] * len(items)
        for index in _biggest_first(items, cost):
            futures[index] = pool.submit(func, items[index], *args)
        for future in futures:
            yield future.result()


def _biggest_first(items: Sequence[Any], cost: Callable[[Any], float] | None) -> list[int]:
    """Indexes of ``items``, biggest ``cost`` first, ties in order."""
    return sorted(range(len(items)), key=lambda i: (-(cost(items[i]) if cost else 0), i))


@contextmanager
def _local_pool(
    count: int, jobs: int, initializer: Callable[[], None] | None, workers: Workers | None
) -> Iterator[cf.ProcessPoolExecutor | None]:
    """The process pool for ``count`` items: the build's ``workers``, or one of ``jobs`` made for
    this call and shut down after it; None when the work runs inline (one job or one item).

    On any exception (Ctrl-C, SIGTERM, a failed task, a caller that stops reading results) the
    processes are stopped at once and what is queued is dropped: nothing is converted after
    that, and no worker still writes into the staging folder the caller will remove.
    """
    if workers is not None:
        pool = workers.pool() if count > 1 else None
    else:
        size = min(jobs or cpu_count(), count)
        pool = _pool(size, initializer) if size > 1 else None
    if pool is None:
        yield None
        return
    try:
        yield pool
    except BaseException:
        if workers is not None:
            workers.stop()
        else:
            _stop(pool)
        raise
    if workers is None:
        pool.shutdown(wait=True)


def quiet_worker_signals() -> None:
    """Default worker setup: interrupts are the parent's business (it stops the pool). A forked
    worker would otherwise inherit the build's SIGTERM handler and print a KeyboardInterrupt
    traceback when the pool is terminated after an error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


# ---------------------------------------------------------------- local


def _run_inline(task, items, order, folder, args, progress) -> list[Any]:
    results: list[Any] = [None] * len(items)
    for done, index in enumerate(order, 1):
        results[index] = _trimmed(task, items[index], str(folder), *args)
        if progress:
            progress(done, len(items))
    return results


def _run_on(pool: cf.ProcessPoolExecutor, task, items, order, folder, args, progress) -> list[Any]:
    """Tasks on ``pool`` (a ``_local_pool``, which stops it if anything here raises)."""
    results: list[Any] = [None] * len(items)
    futures = {pool.submit(_trimmed, task, items[i], str(folder), *args): i for i in order}
    for done, future in enumerate(cf.as_completed(futures), 1):
        results[futures[future]] = future.result()
        if progress:
            progress(done, len(items))
    return results


def _trimmed(task, *args):
    """Run one task, then hand the memory it freed back to the OS (bounded worker RSS)."""
    try:
        return task(*args)
    finally:
        release_memory()


_LIBC: Any = None


def release_memory() -> None:
    """``malloc_trim(0)`` on glibc (no-op elsewhere): freed heap pages go back to the OS."""
    global _LIBC  # a cached library handle, not state any result depends on
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


# ---------------------------------------------------------------- dask


def in_scratch(task: Callable[..., Any], item: Any, *args) -> tuple[Any, tuple[tuple[str, bytes], ...]]:
    """Run ``task(item, scratch, *args)`` in a private scratch folder on a (Dask) worker.

    Returns the task's result and every file it wrote, as sorted ``(relpath, bytes)`` pairs;
    the scratch folder is removed before returning.
    """
    scratch = Path(tempfile.mkdtemp(prefix="dcmpack-task-"))
    try:
        os.chmod(scratch, 0o700)
        result = task(item, str(scratch), *args)
        files = sorted((p.relative_to(scratch).as_posix(), p.read_bytes()) for p in scratch.rglob("*") if p.is_file())
        return result, tuple(files)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        release_memory()


def versions() -> dict[str, str]:
    """Versions of the packages a byte-identical build depends on (run here and on workers)."""
    from importlib.metadata import PackageNotFoundError, version

    from packager import __version__

    found = {"dcmpack": __version__}
    for name in MATCHED_PACKAGES[1:]:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def _readable(paths: tuple[str, ...]) -> bool:
    return all(os.access(p, os.R_OK) for p in paths)


def _connect(address: str):
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - dask is a declared extra
        raise ClusterError("--executor dask:// needs the 'distributed' package (pip install 'dcmpack[dask]')") from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"--executor: cannot reach the Dask scheduler at {address} ({type(exc).__name__}); is it running?"
        ) from None


def _check_cluster(client, address: str, probe: tuple[str, ...]) -> None:
    workers = client.scheduler_info().get("workers", {})
    if not workers:
        raise ClusterError(f"--executor: the Dask cluster at {address} has no workers")
    here = versions()
    for worker, theirs in sorted(client.run(versions).items()):
        for name in MATCHED_PACKAGES:
            if theirs.get(name) != here[name]:
                raise ClusterError(
                    f"--executor: Dask worker {worker} has {name} {theirs.get(name)}, "
                    f"this machine {here[name]}: install the same versions everywhere "
                    "(the bundle must not depend on where a series was converted)"
                )
    if probe and not all(client.run(_readable, probe).values()):
        raise ClusterError(
            "--executor: Dask workers cannot read the input files at the paths this "
            "machine sees; put the sources on a filesystem shared with the workers"
        )


def _run_dask(address, task, items, order, folder, args, progress, probe) -> list[Any]:
    from distributed import as_completed

    client = _connect(address)
    try:
        _check_cluster(client, address, probe)
        run_id = uuid.uuid4().hex[:12]
        futures = {}
        for rank, index in enumerate(order):
            future = client.submit(
                in_scratch,
                task,
                items[index],
                *args,
                key=f"dcmpack-{run_id}-{index}",
                priority=len(order) - rank,
                pure=False,
                retries=0,
            )
            futures[future] = index
        results: list[Any] = [None] * len(items)
        try:
            for done, future in enumerate(as_completed(list(futures), loop=client.loop), 1):
                result, files = future.result()
                future.release()
                for relpath, data in files:
                    _write(folder, relpath, data)
                results[futures[future]] = result
                if progress:
                    progress(done, len(items))
        except BaseException:
            client.cancel(list(futures))
            raise
        return results
    finally:
        client.close()


def _write(folder: Path, relpath: str, data: bytes) -> None:
    target = folder / relpath
    if not target.resolve().is_relative_to(folder.resolve()):
        raise ClusterError(f"--executor: a task returned a file outside the dataset ({relpath})")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(target, "wb") as handle:
        handle.write(data)
