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
