"""Naming: heuristics, BIDS entities, de-identified labels, paths and dataset tables."""
