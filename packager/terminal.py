"""The command line's terminal: logging set-up, masked warning lines, progress bars, stderr lines.

What ``cli`` shows while a command runs, apart from what it shows as a result (``render``):
rich progress bars on a terminal, sparse plain lines otherwise, nothing with ``--quiet``;
library warnings counted, never shown (they can quote header values); every log line's paths
masked like an error's (``phi.logmask``).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections import Counter

from packager import render
from packager.phi.logmask import mask_message
from packager.render import err  # one stderr writer (paths masked) for results and progress

#: progress steps reported by the API -> (label, unit); unit "bytes" is shown as MB.
STEPS = {
    "fetch": ("fetching instances", "files"),
    "scan": ("scanning headers", "files"),
    "convert": ("converting series", "series"),
    "zip": ("zipping", "bytes"),
    "audit": ("auditing for PHI", ""),
    "verify": ("verifying", ""),
    "report": ("writing QC report", "runs"),
}


class State:
    """What the error handler in ``main`` needs to know about the running command."""

    verbose = False
    as_json = False
    console = None
    warnings: Counter = Counter()


def console():
    """The one rich console on stderr (shared by logging and progress bars)."""
    if State.console is None:
        from rich.console import Console

        State.console = Console(stderr=True, highlight=False)
    return State.console


def setup_logging(verbose: bool, quiet: bool, as_json: bool = False) -> None:
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=console(), show_time=False, show_path=False, markup=False, rich_tracebacks=False
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    handler.addFilter(_mask_record)
    root = logging.getLogger("packager")
    root.handlers[:] = [h for h in root.handlers if isinstance(h, logging.NullHandler)] + [handler]
    root.setLevel(level)
    root.propagate = False
    for noisy in ("dicom2nifti", "pydicom", "bids", "nibabel"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Library warnings quote header values ("Invalid value for VR DA: '19580214'"): never shown,
    # only counted (STYLE 10); --verbose reports the count at the end.
    warnings.showwarning = _count_warning
    State.verbose = verbose
    State.as_json = as_json
    if verbose:  # which build of the per-file core runs (an interpreted one is slower: say why)
        from packager.dicom import core

        core.say_once()


def _count_warning(message, category, filename, lineno, file=None, line=None) -> None:
    State.warnings[category.__name__] += 1


def _mask_record(record: logging.LogRecord) -> bool:
    """Logging filter: a warning's paths are masked like an error's (``phi.logmask``)."""
    record.msg, record.args = mask_message(record.getMessage()), None
    return True


class _PlainFormatter(logging.Formatter):
    """``warning: input: skipped 2 symlink loop(s)``: one line, level in lower case."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


class Bars:
    """Rich progress bars on a TTY, sparse plain lines otherwise, nothing with --quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.bars = None
        self.tasks: dict[str, int] = {}
        self.last: dict[str, tuple[int, float]] = {}

    def __enter__(self):
        if not self.quiet and self.tty:
            from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
            from rich.text import Text

            class Amount(ProgressColumn):
                def render(self, task):
                    unit = task.fields.get("unit", "")
                    if task.total is None:
                        return Text("")
                    if unit == "bytes":
                        return Text(f"{render.mb(task.completed)}/{render.mb(task.total)}")
                    return Text(f"{int(task.completed)}/{int(task.total)} {unit}")

            self.bars = Progress(
                TextColumn("{task.description:<20}"),
                BarColumn(),
                Amount(),
                TimeElapsedColumn(),
                console=console(),
                transient=True,
            )
            self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bars is not None:
            self.bars.__exit__(*exc)

    def __call__(self, step: str, done: int, total: int | None) -> None:
        if self.quiet:
            return
        label, unit = STEPS.get(step, (step, ""))
        if self.bars is not None:
            if step not in self.tasks:
                for task in self.bars.tasks:  # an earlier step with no count is over now
                    if task.total is None:
                        self.bars.update(task.id, total=1, completed=1)
                self.tasks[step] = self.bars.add_task(label, total=total, unit=unit)
            self.bars.update(self.tasks[step], completed=done, total=total)
            return
        if total is None:
            if step not in self.last:
                self.last[step] = (0, 0.0)
                err(f"{label} ...")
            return
        # Plain lines (logs, CI): the start, each quarter, the end, and at least every 15 s.
        now = time.monotonic()
        previous, when = self.last.get(step, (-1, 0.0))
        quarter = max(total // 4, 1)
        if done != previous and (
            previous < 0 or done == total or done // quarter > previous // quarter or now - when >= 15
        ):
            self.last[step] = (done, now)
            amount = f"{render.mb(done)}/{render.mb(total)}" if unit == "bytes" else f"{done}/{total} {unit}"
            err(f"{label}: {amount}")
