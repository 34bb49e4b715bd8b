"""Conversion: one series to a NIfTI volume (stacking, scaling, diffusion tables, engines)."""
