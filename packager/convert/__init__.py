"""Conversion: one series to a NIfTI volume (stacking, scaling, diffusion tables, engines).

``ConversionFailed`` lives here, below every module of the package: ``volume`` calls ``check``
and both (and the dcm2niix engine) refuse a series with it.
"""


class ConversionFailed(Exception):
    """A series could not be converted; ``detail`` is safe to show (no header values)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail
