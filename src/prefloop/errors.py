"""Errors a person reads: each says what is wrong, where, and what to do."""


class PrefloopError(Exception):
    """Base class; the CLI prints the message (no traceback) and exits with code 2."""


class ConfigError(PrefloopError):
    """A config key or value is wrong."""


class DataError(PrefloopError):
    """Input data is malformed; the message names file, line and field."""
