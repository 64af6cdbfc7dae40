"""melanoma: a reproducible melanoma image classifier, built as a DVC + MLflow pipeline."""

__version__ = "0.1.0"
