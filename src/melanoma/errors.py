"""Exceptions with messages meant for the person running the pipeline."""


class MelanomaError(Exception):
    """Base class: the CLI prints the message and exits non-zero, without a traceback."""


class ConfigError(MelanomaError):
    """A bad value or key in params.yaml."""


class DataError(MelanomaError):
    """Input data that cannot be used: a missing column, an empty class, an unreadable folder."""


class IncompleteError(MelanomaError):
    """A stage finished what it could but some work failed (the report says which)."""
