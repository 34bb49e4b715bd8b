"""dcmpack: DICOM sessions -> a de-identified, verified, reproducible BIDS zip bundle.

Public API (the CLI is a thin wrapper over these)::

    from packager import load_config, merge_flags, build, plan, verify, audit
    config = merge_flags(load_config("release.toml"), sources=("dicom/",), key_file="key")
    result = build(config)          # BuildResult: bundle path, sha256, runs, excluded
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

from packager.api import (  # noqa: E402
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
from packager.config import ReleaseConfig, load_config, merge_flags  # noqa: E402
from packager.errors import ConfigError, DcmpackError, InputError, OutputError, PhiAuditError, VerifyError  # noqa: E402
from packager.model import BidsName, BuildResult, Excluded, ExclusionReason, Plan, Series, Skip  # noqa: E402

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
