"""Argument and input checks shared by the attention layers (the messages name the offending argument)."""
from __future__ import annotations

from typing import Optional

import torch
from timm.layers import register_notrace_function


def check_num_heads(dim: int, num_heads: int) -> None:
    """Raise ``ValueError`` unless ``num_heads >= 1`` divides ``dim``."""
    if num_heads < 1 or dim % num_heads != 0:
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
def check_channels_last(x: torch.Tensor, dim: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[B, H, W, dim]``."""
    if x.dim() != 4 or x.shape[-1] != dim:
        raise ValueError(f'x must have shape [B, H, W, {dim}], got {shape_str(x)}')


@register_notrace_function
def check_nchw(x: torch.Tensor, dim: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[B, dim, H, W]``."""
    if x.dim() != 4 or x.shape[1] != dim:
        raise ValueError(f'x must have shape [B, {dim}, H, W], got {shape_str(x)}')


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
