"""Argument and input checks shared by the attention layers (the messages name the offending argument)."""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Optional, Tuple

import torch
from timm.layers import register_notrace_function


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
    """Check a numeric argument: a finite number (an int if ``integer``; booleans are neither) between ``low`` and
    ``high`` (None: unbounded; closed ends unless ``low_open`` / ``high_open``); None passes when ``optional``.

    Raises:
        TypeError: not a number (not an int), naming ``name`` and what it must be.
        ValueError: NaN, infinite or outside the interval, naming ``name`` and the interval.
    """
    if value is None and optional:
        return
    kind = 'an int' if integer else 'a number'
    expected = f'{kind} {_interval(low, high, low_open, high_open)}' if (low, high) != (None, None) else kind
    if optional:
        expected += ' (or None)'
    if isinstance(value, bool) or not isinstance(value, Integral if integer else Real):
        raise TypeError(f'{name} must be {expected}, got {name}={value!r}')
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        raise ValueError(f'{name} must be {expected}, got {name}={value!r}')


def check_size_pair(name: str, value: Any, low: int = 1) -> Tuple[int, int]:
    """An int or a pair of ints, each >= ``low``, as a pair (a kernel, dilation, patch or grid size).

    Raises:
        TypeError: not an int or a pair of ints (a float would be truncated), naming ``name``.
        ValueError: a pair of another length, or an entry below ``low``.
    """
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f'{name} must be an int or a pair of ints, got {name}={value!r}')
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise TypeError(f'{name} must be an int or a pair of ints >= {low}, got {name}={value!r}')
        if v < low:
            raise ValueError(f'{name} must be an int or a pair of ints >= {low}, got {name}={value!r}')
    return int(pair[0]), int(pair[1])


def check_bool(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is a bool (a string such as ``'False'`` would be taken as True)."""
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be a bool, got {name}={value!r}')


def check_drop(name: str, value: Any) -> None:
    """A dropout probability: a number in ``[0, 1)`` (NaN refused; :func:`check_number`)."""
    check_number(name, value, 0, 1, high_open=True)


def check_num_heads(dim: int, num_heads: int) -> None:
    """Raise ``TypeError`` / ``ValueError`` unless ``dim`` and ``num_heads`` are ints >= 1 and ``num_heads`` divides
    ``dim``."""
    check_number('dim', dim, 1, integer=True)
    check_number('num_heads', num_heads, 1, integer=True)
    if dim % num_heads != 0:
        raise ValueError(f'num_heads must be >= 1 and divide dim={dim}, got num_heads={num_heads}')


def check_qk_scale(qk_scale: Optional[float]) -> None:
    """Raise ``ValueError`` unless ``qk_scale`` is None or positive."""
    if qk_scale is not None and not qk_scale > 0:
        raise ValueError(f'qk_scale must be a positive float or None, got qk_scale={qk_scale}')


def shape_str(x: torch.Tensor) -> str:
    """``str(tuple(x.shape))``, also in TorchScript (which cannot build a tuple of unknown length)."""
    sizes = [str(s) for s in x.shape]
    return '(' + ', '.join(sizes) + (',)' if len(sizes) == 1 else ')')


@register_notrace_function  # a shape test: one opaque node under FX, not control flow on a traced shape
def check_channels_last(x: torch.Tensor, dim: int, like: Optional[torch.Tensor] = None) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[B, H, W, dim]``; with a parameter ``like``, also ``TypeError`` unless
    ``x`` has its dtype (:func:`check_input_dtype`)."""
    if x.dim() != 4 or x.shape[-1] != dim:
        raise ValueError(f'x must have shape [B, H, W, {dim}], got {shape_str(x)}')
    if like is not None:
        check_input_dtype(x, like)


@register_notrace_function
def check_nchw(x: torch.Tensor, dim: int, like: Optional[torch.Tensor] = None) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[B, dim, H, W]``; with a parameter ``like``, also ``TypeError`` unless
    ``x`` has its dtype (:func:`check_input_dtype`)."""
    if x.dim() != 4 or x.shape[1] != dim:
        raise ValueError(f'x must have shape [B, {dim}, H, W], got {shape_str(x)}')
    if like is not None:
        check_input_dtype(x, like)


# the input dtypes that autocast casts to its own (float64 it leaves as it is)
AUTOCAST_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@register_notrace_function
def check_input_dtype(x: torch.Tensor, like: torch.Tensor, name: str = 'x') -> None:
    """Raise ``TypeError`` unless ``x`` is floating point and of the dtype of the parameter ``like`` (under autocast
    for ``x``'s device also float32, float16 or bfloat16, which autocast casts). Under TorchScript only floating point
    is checked."""
    if not x.is_floating_point():
        raise TypeError(f'{name} must be a floating-point tensor, got dtype {x.dtype}')
    if torch.jit.is_scripting():
        return
    if x.dtype != like.dtype and not (torch.is_autocast_enabled(x.device.type) and x.dtype in AUTOCAST_INPUT_DTYPES):
        raise TypeError(f"{name} must have the dtype of the parameters ({like.dtype}; under autocast also float32, "
                        f'float16 or bfloat16), got dtype {x.dtype}')


@register_notrace_function
def check_nonempty(x: torch.Tensor, name: str = 'x') -> None:
    """Raise ``ValueError`` when ``x`` has a dimension of size 0 (no batch, or no tokens to attend over)."""
    if x.numel() == 0:
        raise ValueError(f'{name} must be non-empty (every dimension >= 1), got {shape_str(x)}')
