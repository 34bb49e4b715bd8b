"""Convert, the engines: whether the conversion engine a build names can run here (``require``),
checked by the build before any task is sent. Kept apart from ``convert.dcm2niix`` (which runs
the engine and reads its output with numpy and pydicom) so that a build whose every series comes
from the build cache checks it without importing those."""

from __future__ import annotations

import os
from pathlib import Path

from packager.config import Engine
from packager.errors import ConfigError

_INSTALL_HINT = "pip install dcm2niix"


def binary() -> Path:
    """Path of the ELF binary inside the ``dcm2niix`` wheel (not its Python console script).

    Raises
    ------
    ConfigError
        The wheel is not installed, or its binary is missing or not executable.
    """
    try:
        import dcm2niix
    except ImportError:
        raise ConfigError(f"--engine dcm2niix: the dcm2niix package is not installed ({_INSTALL_HINT})") from None
    path = Path(getattr(dcm2niix, "bin_path", "") or "")
    if not path.name or not path.is_file() or not os.access(path, os.X_OK):
        raise ConfigError(
            f"--engine dcm2niix: the dcm2niix package has no runnable binary "
            f"(reinstall: {_INSTALL_HINT} --force-reinstall)"
        )
    return path


def require(engine: str) -> None:
    """Fail early (ConfigError, exit 2) when the chosen engine cannot run here."""
    if engine not in tuple(Engine):
        raise ConfigError(f"--engine: must be {' or '.join(Engine)}")
    if engine in (Engine.DCM2NIIX, Engine.AUTO):
        binary()
