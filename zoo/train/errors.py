"""The error type for misconfiguration found before training starts, and the argument checks that raise it."""
from typing import Any, Collection

from zoo.layers._checks import check_number as layer_check_number

__all__ = ['ConfigError', 'check_number', 'check_numbers', 'check_choice']


class ConfigError(ValueError):
    """A wrong argument, file or folder, found before training starts.

    ``train.py`` prints the message without a traceback and exits with status 2; in Python it is a ``ValueError``.
    """


def check_number(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
    """:func:`zoo.layers._checks.check_number` (same arguments: bounds, ``low_open`` / ``high_open``, ``integer``,
    ``optional``) raising :class:`ConfigError` for a wrong type or value, naming ``name``."""
    try:
        layer_check_number(name, value, *args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{str(e).replace('(or None)', '(or null)')}.") from None  # YAML spells None null


def check_numbers(name: str, value: Any, count: int, *args, increasing: bool = False, **kwargs) -> None:
    """``value`` is a sequence of ``count`` numbers, each as :func:`check_number` (same arguments), and
    non-decreasing if ``increasing``; else :class:`ConfigError` naming ``name``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, '__len__') or len(value) != count:
        raise ConfigError(f'{name} must be a list of {count} numbers, got {name}={value!r}.')
    for i, v in enumerate(value):
        check_number(f'{name}[{i}]', v, *args, **kwargs)
    if increasing and any(a > b for a, b in zip(value, value[1:])):
        raise ConfigError(f'{name} must be in increasing order (low, high), got {name}={list(value)!r}.')


def check_choice(name: str, value: Any, choices: Collection[str]) -> None:
    """Raise :class:`ConfigError` naming ``name`` and the choices unless ``value`` is one of them."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f'{name} must be one of {sorted(choices)}, got {name}={value!r}.')
