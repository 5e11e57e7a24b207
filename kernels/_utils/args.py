"""Normalisation of int-or-tuple arguments."""
from __future__ import annotations

from typing import Any, Sequence


def to_ntuple(value: Any, n: int, name: str, kind: type = int) -> tuple:
    """Return ``value`` as an ``n``-tuple of ``kind``; a scalar is repeated on every axis.

    Raises:
        TypeError: an element is not of ``kind`` (bools are not ints here, ints are not bools).
        ValueError: a sequence of the wrong length.
    """
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = tuple(value)
        if len(items) != n:
            raise ValueError(f'{name} must be a single value or a tuple of {n} values, got {value!r}')
    else:
        items = (value,) * n
    for item in items:
        ok = isinstance(item, bool) if kind is bool else isinstance(item, int) and not isinstance(item, bool)
        if not ok:
            raise TypeError(f'{name} must be {kind.__name__} or a tuple of {n} {kind.__name__}s, got {value!r}')
    return items
