"""Release, staging: the bundle's name, the private folder a build writes in, and one atomic publish.

``staging(output)`` is a 0700 folder on the output's filesystem (so the final ``os.replace`` is
atomic), removed on exit, signal or crash: nothing half-built is ever left or published.
SIGTERM/SIGHUP end a build like Ctrl-C (exit 130), and write failures of the output filesystem
become one ``OutputError`` naming the output folder. Refuses: a bundle name pattern
that is not a plain file name (ConfigError), an output folder that cannot be created or
written (OutputError).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from packager.config import ReleaseConfig
from packager.errors import ConfigError, OutputError

# Write failures that mean "the output filesystem", not "a bug": errno -> what to tell the user.
_OUTPUT_ERRNOS = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the output filesystem",
    errno.EROFS: "read-only filesystem",
    errno.EIO: "input/output error on the output disk",
}
# Signals that end a build like Ctrl-C does: staging removed, nothing published, exit 130.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _stop(signum, frame):
    """SIGTERM/SIGHUP -> KeyboardInterrupt, so every ``finally`` (staging cleanup) runs."""
    raise KeyboardInterrupt


def bundle_name(config: ReleaseConfig) -> str:
    """``<name>-<version>.zip`` (or the [bundle] name pattern).

    Parameters
    ----------
    config : ReleaseConfig
        Its ``[bundle] name`` pattern and ``[dataset]`` name and version.

    Returns
    -------
    str
        A plain file name.

    Raises
    ------
    ConfigError
        A pattern with other fields than {name} and {version}, or not a plain file name.
    """
    try:
        stem = config.bundle.name.format(name=config.dataset.name, version=config.dataset.version)
    except (KeyError, IndexError, ValueError):
        raise ConfigError("[bundle] name: use only {name} and {version}") from None
    if "/" in stem or stem.startswith("."):
        raise ConfigError("[bundle] name must be a plain file name")
    return stem + ".zip"


@contextmanager
def staging(output: Path) -> Iterator[Path]:
    """A private (0700) folder on the output's filesystem, removed on exit, signal or crash.

    SIGTERM and SIGHUP are turned into KeyboardInterrupt while it exists (SIGINT already is),
    and write failures of the output filesystem (disk full, quota, read-only) become one
    ``OutputError`` naming the output folder instead of a stack trace.
    """
    created = _missing_folders(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output: {output}: cannot create folder ({os_reason(exc)})") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise OutputError(f"output: {output}: folder not writable (choose another with -o)")
    lock = _lock(output)
    _remove_stale_staging(output)
    try:
        folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output))
    except OSError as exc:
        _unlock(output, lock)
        _remove_empty(created)
        raise OutputError(f"output: {output}: cannot create staging folder ({os_reason(exc)})") from None
    os.chmod(folder, 0o700)
    previous: dict[int, Any] = {}
    try:
        for number in _STOP_SIGNALS:
            previous[number] = signal.signal(number, _stop)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
        pass
    try:
        yield folder
    except OSError as exc:
        if exc.errno in _OUTPUT_ERRNOS:
            raise OutputError(
                f"output: {output}: {_OUTPUT_ERRNOS[exc.errno]} while building; nothing published, staging removed"
            ) from exc
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _unlock(output, lock)
        _remove_empty(created)  # a failed build leaves no empty output folder behind
        for number, handler in previous.items():
            signal.signal(number, handler)


def _missing_folders(output: Path) -> list[Path]:
    """The folders ``output.mkdir(parents=True)`` is about to create, deepest first."""
    missing = []
    for folder in (output, *output.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders this build created, deepest first, while they are empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


def destination(config: ReleaseConfig) -> tuple[Path, str]:
    """(output folder, bundle file name): ``-o NAME.zip`` is that file, any other ``-o`` a folder.

    Raises
    ------
    ConfigError
        A bundle name pattern that is not a plain file name.
    """
    output = Path(config.output)
    if output.suffix.lower() == ".zip":
        return output.parent, output.name
    return output, bundle_name(config)


def check_replace(target: Path, config: ReleaseConfig) -> None:
    """An existing bundle may be replaced only with ``--force``, and one made with another key only
    with ``--new-key`` too: a new key gives every subject new pseudonyms and every date a new shift.

    Raises
    ------
    OutputError
        The bundle exists without --force, or its MANIFEST.json states another key fingerprint.
    """
    if not target.exists():
        return
    if not config.force:
        raise OutputError(f"output: {target} exists (use --force to replace it)")
    if config.new_key:
        return
    from packager.naming.deid import key_fingerprint

    before = _bundle_fingerprint(target)
    now = key_fingerprint(config.key)
    if before != now:
        stated = f"key fingerprint {before}" if before else "no key fingerprint"
        raise OutputError(
            f"output: {target} was built with {stated}, this build's is {now or 'none'}: replacing it would "
            "give every subject new pseudonyms (use the original key, or --force --new-key to do so on purpose)"
        )


def _bundle_fingerprint(bundle: Path) -> str | None:
    """The ``key_fingerprint`` an existing bundle's MANIFEST.json states (None: unreadable)."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(bundle) as archive:
            name = next(n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "MANIFEST.json")
            return str(json.loads(archive.read(name)).get("key_fingerprint") or "")
    except (OSError, zipfile.BadZipFile, StopIteration, ValueError, KeyError):
        return None


STAGING_PREFIX = ".dcmpack-staging-"
#: Held (flock) by the build writing into an output folder. The kernel drops it when the build
#: ends in any way, SIGKILL included, so it is never stale; the file is removed on a normal exit.
LOCK_NAME = ".dcmpack-build.lock"


def _lock(output: Path) -> int:
    """Take the output folder's build lock (a second build into one folder refuses at once)."""
    path = output / LOCK_NAME
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise OutputError(f"output: {output}: cannot create the build lock ({os_reason(exc)})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise OutputError(
                f"output: {output}: another dcmpack build is writing into this folder "
                "(wait for it to end, or choose another with -o)"
            ) from None
        try:  # the lock of a build that just ended may be on a file it has already removed
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)


def _unlock(output: Path, descriptor: int) -> None:
    try:
        (output / LOCK_NAME).unlink()
    except OSError:
        pass
    os.close(descriptor)


def _remove_stale_staging(output: Path) -> None:
    """Staging folders of builds that were killed (SIGKILL, the OOM killer, a lost machine): with
    the lock held no other build is writing here, so every staging folder left is stale."""
    for stale in output.glob(STAGING_PREFIX + "*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def private_folder(folder: Path) -> Path:
    """``folder``, created if needed and made private (0700), for files fetched from an archive."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise OutputError(f"output: {folder}: cannot create a private folder ({os_reason(exc)})") from None
    return folder


def published_stat(path: Path) -> os.stat_result | None:
    """The stat of a file as a build publishes it: a regular file (not a link to one elsewhere)
    owned by this user, which no one else may write; None for anything else."""
    try:
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return None
    return info


def publish(moves: tuple[tuple[Path, Path], ...]) -> None:
    """Move staged files to where they are published, in order (the bundle first), each with one
    atomic rename; the first move's target names the bundle in the error."""
    try:
        for staged, target in moves:
            os.replace(staged, target)
    except OSError as exc:
        raise OutputError(f"output: cannot publish {moves[0][1].name} ({os_reason(exc)})") from None


def os_reason(exc: OSError) -> str:
    """A value-free reason for an OSError (its errno name, never its message text)."""
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def worker_signals() -> None:
    """Workers leave interrupts to the parent (which stops them): no second traceback per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for number in _STOP_SIGNALS:
        signal.signal(number, signal.SIG_DFL)
