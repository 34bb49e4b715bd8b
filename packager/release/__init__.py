"""Release: bundle, PHI audit, verification, private QC report."""
