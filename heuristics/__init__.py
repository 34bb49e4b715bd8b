"""Heuristics shipped with dcmpack: each module exposes ``classify(series) -> BidsName | Skip``."""
