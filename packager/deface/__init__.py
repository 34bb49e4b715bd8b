"""Deface: one converted head volume -> the same volume with the face zeroed, or a refusal."""
