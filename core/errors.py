"""Exceptions a user can act on: the CLI prints their message and exits non-zero, no traceback."""


class FlauditError(Exception):
    """Base of every error caused by input (config, data, names), not by a bug."""


class ConfigError(FlauditError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class UnknownNameError(FlauditError, KeyError):
    """A registry was asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataNotFoundError(FlauditError, FileNotFoundError):
    """An on-disk dataset is missing; the message says what to put where."""


class InvalidUpdateError(FlauditError, ValueError):
    """A model update has the wrong shape or non-finite values."""
