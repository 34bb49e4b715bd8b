"""Release, advice: why a series was left out -> what the data owner can do about it (one line each).

A table for the QC report (a "what to do" line per exclusion) and the build's summary; value-free.
"""

from __future__ import annotations

from packager.model import ExclusionReason

WHAT_TO_DO: dict[ExclusionReason, str] = {
    ExclusionReason.NOT_IMAGE: "nothing: reports, presentation states and raw data never go into a BIDS bundle",
    ExclusionReason.SECONDARY_CAPTURE: "nothing: screenshots and secondary captures can show PHI in their pixels",
    ExclusionReason.BURNED_IN: "export the series without burned-in annotation (it is PHI in the pixels)",
    ExclusionReason.DERIVED: "if it belongs in the release: [exclude] derived = false in release.toml",
    ExclusionReason.LOCALIZER: "nothing (localizers are not analysed); [exclude] localizers = false keeps them",
    ExclusionReason.RGB: "nothing: colour images are not MR data dcmpack converts",
    ExclusionReason.SPECTROSCOPY: "nothing: spectroscopy and raw data are not converted",
    ExclusionReason.PHOENIX: "nothing: a protocol report is not an image",
    ExclusionReason.UNSUPPORTED_SOP: "convert it with another tool if it belongs in the release",
    ExclusionReason.HEURISTIC_SKIP: (
        "if it belongs in the release: write a rule for it (dcmpack inspect lists the fields rules match on)"
    ),
    ExclusionReason.UNNAMED: "write a rule for it: dcmpack inspect lists the fields rules match on",
    ExclusionReason.CONVERSION_FAILED: (
        "rerun with --verbose; if the series looks sound in a viewer, report the detail above as a bug"
    ),
    ExclusionReason.INCONSISTENT: "check the export (missing, extra or mixed files) and export the series again",
    ExclusionReason.DUPLICATE: "give the series distinct names (acq-, run-) in the rules, or skip one",
    ExclusionReason.CONFIG: "change the [exclude] settings of release.toml if it should be released",
}


def what_to_do(reason: ExclusionReason) -> str:
    """The one line of advice for ``reason``."""
    return WHAT_TO_DO[reason]
