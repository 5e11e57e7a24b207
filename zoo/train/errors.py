"""The error type for misconfiguration found before training starts."""

__all__ = ['ConfigError']


class ConfigError(ValueError):
    """A wrong argument, file or folder, found before training starts.

    ``train.py`` prints the message without a traceback and exits with status 2; in Python it is a ``ValueError``.
    """
