"""dcmpack: DICOM sessions -> a de-identified, verified, reproducible BIDS zip bundle.

Public API (the CLI is a thin wrapper over these)::

    from packager import load_config, merge_flags, build, plan, verify, audit
    config = merge_flags(load_config("release.toml"), sources=("dicom/",), key_file="key")
    result = build(config)          # BuildResult: bundle path, sha256, runs, excluded
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

from packager.config import ReleaseConfig, load_config, merge_flags  # noqa: E402
from packager.errors import ConfigError, DcmpackError, InputError, OutputError, PhiAuditError, VerifyError  # noqa: E402
from packager.model import BidsName, BuildResult, Excluded, ExclusionReason, Plan, Series, Skip  # noqa: E402

# The API functions are imported on first use (PEP 562): ``packager.api`` brings in pydicom, numpy,
# nibabel and the conversion stack (~0.7 s), which ``dcmpack --help`` and ``version`` never need.
_API = ("audit", "build", "bundle_name", "diff", "init_config", "inspect", "plan", "pull", "sample_config", "verify")
if TYPE_CHECKING:
    from packager.api import (
        audit,
        build,
        bundle_name,
        diff,
        init_config,
        inspect,
        plan,
        pull,
        sample_config,
        verify,
    )


def __getattr__(name: str):
    if name in _API:
        from packager import api

        return getattr(api, name)
    raise AttributeError(f"module 'packager' has no attribute {name!r}")


__all__ = [
    "__version__",
    "audit",
    "build",
    "bundle_name",
    "diff",
    "init_config",
    "inspect",
    "plan",
    "pull",
    "sample_config",
    "verify",
    "ReleaseConfig",
    "load_config",
    "merge_flags",
    "ConfigError",
    "DcmpackError",
    "InputError",
    "OutputError",
    "PhiAuditError",
    "VerifyError",
    "BidsName",
    "BuildResult",
    "Excluded",
    "ExclusionReason",
    "Plan",
    "Series",
    "Skip",
]
