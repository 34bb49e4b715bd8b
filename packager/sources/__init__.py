"""Sources: a SOURCE argument -> local files (SourceSet).

Two kinds of SOURCE: local folders and zips (``packager.sources.local``), and remote archives
(``dicomweb+``, ``dimse://``, ``xnat://``) fetched by ``packager.sources.remote`` into the same
private staging dir. This module only tells them apart and dispatches.
Refuses: missing paths, unreadable folders, unsafe zips, symlink loops (counted, skipped); bad
or unreachable remote sources (see ``packager.sources.remote``).
"""

from __future__ import annotations

from pathlib import Path

from packager.model import SourceSet
from packager.sources.local import open_local

REMOTE_SCHEMES = ("dicomweb+http://", "dicomweb+https://", "dimse://", "xnat://", "xnat+http://", "xnat+https://")


def is_remote(spec: str) -> bool:
    """True for URLs handled by ``packager.sources.remote``."""
    return spec.startswith(REMOTE_SCHEMES)


def open_source(spec: str, staging: Path, **remote_options) -> SourceSet:
    """Turn one SOURCE argument into local files.

    Parameters
    ----------
    spec : str
        A folder, a ``.zip`` file or a remote URL.
    staging : Path
        Private (0700) folder for extracted or downloaded files; removed by the caller.
    **remote_options
        Passed to ``packager.sources.remote.fetch`` for URLs (ca_bundle, move_dest, retrieve,
        timeout, progress); ignored for local paths.

    Returns
    -------
    SourceSet
        The source's files, in a stable order.

    Raises
    ------
    InputError
        Missing path, unreadable folder, unsafe or corrupt zip, nothing found.
    """
    if is_remote(spec):
        from packager.sources import remote  # optional dependencies, imported only when used

        return remote.fetch(spec, staging, **{k: v for k, v in remote_options.items() if v is not None})
    return open_local(spec, staging)
