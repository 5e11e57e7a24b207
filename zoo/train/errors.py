"""The error type for misconfiguration found before training starts, and the argument checks that raise it."""
import math
from numbers import Real
from typing import Any, Collection, Optional

__all__ = ['ConfigError', 'check_number', 'check_numbers', 'check_choice']


class ConfigError(ValueError):
    """A wrong argument, file or folder, found before training starts.

    ``train.py`` prints the message without a traceback and exits with status 2; in Python it is a ``ValueError``.
    """


def _interval(low: Optional[float], high: Optional[float], low_open: bool, high_open: bool) -> str:
    """``'>= 0'``, ``'< 1'`` or ``'in [0, 1)'``."""
    if high is None:
        return f'> {low}' if low_open else f'>= {low}'
    if low is None:
        return f'< {high}' if high_open else f'<= {high}'
    return f'in {"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'


def check_number(
        name: str,
        value: Any,
        low: Optional[float] = None,
        high: Optional[float] = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
        integer: bool = False,
        optional: bool = False,
) -> None:
    """Raise :class:`ConfigError` naming ``name`` unless ``value`` is a finite number (an int if ``integer``) in the
    interval from ``low`` to ``high`` (either may be None: unbounded; closed ends unless ``low_open`` /
    ``high_open``); None passes when ``optional``. Booleans are not numbers here."""
    if value is None and optional:
        return
    kind = 'an int' if integer else 'a number'
    expected = f'{kind} {_interval(low, high, low_open, high_open)}' if (low, high) != (None, None) else kind
    if optional:
        expected += ' (or null)'
    wrong_type = isinstance(value, bool) or not isinstance(value, int if integer else Real)
    if wrong_type or not math.isfinite(value):
        raise ConfigError(f'{name} must be {expected}, got {name}={value!r}.')
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        raise ConfigError(f'{name} must be {expected}, got {name}={value!r}.')


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
