"""Index, damaged files: which series a damaged file belongs to (issue 19, "one bad file does
not sink a study").

Input: the damaged files of the header pass and the good headers. Output: per series UID the
exclusion detail naming the file, and the files no series can be named for (listed, exit 1).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from packager.index.record import Header
from packager.model import BadFile

log = logging.getLogger(__name__)


def attribute(bad: list[BadFile], headers: list[Header]) -> tuple[dict[str, str], list[BadFile]]:
    """Damaged files -> the series they belong to ({series UID: exclusion detail}) and the rest.

    A file belongs to a series when what is left of its header names the series' UID, or when
    nothing (or only the start of a cut UID) is left and its folder holds that series only.
    """
    known = {h.series_uid for h in headers}
    in_folder: dict[str, set[str]] = defaultdict(set)
    for header in headers:
        in_folder[header.relpath.rpartition("/")[0]].add(header.series_uid)
    found: dict[str, list[BadFile]] = defaultdict(list)
    unattributed = []
    for item in bad:
        uid = item.series_uid if item.series_uid in known else None
        folder = in_folder.get(item.folder, set())
        if uid is None and len(folder) == 1 and next(iter(folder)).startswith(item.series_uid):
            uid = next(iter(folder))
        if uid is None:
            unattributed.append(item)
        else:
            found[uid].append(item)
    details = {}
    for uid, items in found.items():
        more = f" (and {len(items) - 1} more damaged file(s))" if len(items) > 1 else ""
        details[uid] = f"{items[0].problem}{more}: the series is left out"
    if bad:
        log.warning(
            "index: %d damaged file(s): %d series left out, %d file(s) not attributable to a series",
            len(bad),
            len(found),
            len(unattributed),
        )
    return details, unattributed
