"""Starting points: the embedded sample session (``dcmpack build`` with no SOURCE builds
``sample_data/``) and the commented starter release.toml (``dcmpack init``).

Refuses: no ``sample_data/`` (with its release.toml and dicom/) in the working directory or
beside the package (ConfigError); overwriting a release.toml without ``force`` (OutputError).
"""

from __future__ import annotations

from pathlib import Path

from packager.config import ReleaseConfig, load_config, merge_flags, starter_config
from packager.errors import ConfigError, OutputError

SAMPLE_DIR_NAME = "sample_data"


def sample_root() -> Path:
    """The embedded sample session (``sample_data/`` in the working dir or beside the package).

    Returns
    -------
    Path
        The folder holding ``release.toml`` and ``dicom/``.

    Raises
    ------
    ConfigError
        No sample folder found.
    """
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = base / SAMPLE_DIR_NAME
        if (candidate / "release.toml").is_file() and (candidate / "dicom").is_dir():
            return candidate
    raise ConfigError("sample_data/ not found: run from the dcmpack repository root, or give a SOURCE")


def sample_config(**flags) -> ReleaseConfig:
    """The shipped sample config (with its own sample key) for ``dcmpack build`` with no SOURCE.

    Parameters
    ----------
    **flags
        Command-line overrides, as ``config.merge_flags`` takes them (``sources`` is set here).

    Returns
    -------
    ReleaseConfig

    Raises
    ------
    ConfigError
        No sample folder, or a bad flag.
    """
    root = sample_root()
    config = load_config(root / "release.toml")
    flags = dict(flags)
    flags["sources"] = (str(root / "dicom"),)
    return merge_flags(config, **flags)


def init_config(path: Path, *, force: bool = False) -> Path:
    """Write the commented starter release.toml, and a random key ``release.key`` (0600) beside it
    when there is none (the config's ``key_file`` names it).

    Parameters
    ----------
    path : Path
    force : bool
        Overwrite an existing file.

    Returns
    -------
    Path

    Raises
    ------
    OutputError
        The file exists and ``force`` is not set.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputError(f"{path} exists (use --force to overwrite)")
    path.write_text(starter_config(), encoding="utf-8")
    write_key(path.parent / "release.key")
    return path


def write_key(path: Path) -> bool:
    """A new random pseudonym key (64 hex digits, mode 0600) at ``path``, unless one is there.

    Never replaced: a new key gives every subject a new pseudonym and every date a new shift.
    Returns True when a key was written.
    """
    import os
    import secrets

    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return True
