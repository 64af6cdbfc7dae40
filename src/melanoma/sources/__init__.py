"""Data sources, peers of each other: each writes the raw layout of ``melanoma.raw_layout``."""
