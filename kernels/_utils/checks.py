"""Tensor checks shared by the ops. Each raises ``TypeError``/``ValueError`` naming the argument."""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def in_functorch_transform(tensor: torch.Tensor) -> bool:
    """``tensor`` is wrapped by a ``torch.func`` transform (vmap, grad, jvp ...): its values cannot be read on the host
    (``bool``, ``int``) and custom ops need a rule of their own."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def check_tensor(name: str, value, ndim: int | None = None, dtypes: tuple = FLOAT_DTYPES) -> None:
    """``value`` must be a tensor of one of ``dtypes`` with ``ndim`` dimensions."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(value).__name__}')
    if dtypes is not None and value.dtype not in dtypes:
        names = ', '.join(str(d).replace('torch.', '') for d in dtypes)
        raise TypeError(f'{name} must have dtype in ({names}), got {value.dtype}')
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f'{name} must have {ndim} dimensions, got shape {tuple(value.shape)}')


def check_same(names: tuple[str, str], a: torch.Tensor, b: torch.Tensor, what: str = 'dtype') -> None:
    """``a`` and ``b`` must agree on ``what`` ('dtype' or 'device')."""
    va, vb = getattr(a, what), getattr(b, what)
    if va != vb:
        raise ValueError(f'{names[1]} must have the same {what} as {names[0]} ({va}), got {vb}')


def check_scale(scale) -> None:
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f'scale must be a float or None, got {type(scale).__name__}')
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f'scale must be a positive finite float, got {scale}')
