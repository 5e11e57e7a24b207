"""Neighborhood attention (NA / DiNA) blocks over channels-last 2-D token maps.

:class:`NeighborhoodAttention2d` owns the parameters of the legacy NATTEN module (``qkv``, ``rpb``, ``proj``) with the
official names and shapes, so NAT/DiNAT checkpoints load through key renames only. The attention itself is
:func:`zoo_kernels.neighborhood.na2d` on the heads-last layout ``[B, H, W, heads, head_dim]`` that a ``qkv`` Linear
gives after a reshape; the backend is chosen by the kernel (``backend=None``, or the ``ZOO_NA_BACKEND`` environment
variable).

Inputs smaller than ``kernel_size * dilation`` on an axis are zero-padded on the right/bottom before the ``qkv``
projection and cropped afterwards, as NATTEN <= 0.15 modules did: the padded tokens are real keys whose key and value
are the ``qkv`` bias. NAT/DiNAT checkpoints were trained with that behaviour and the official detection and
segmentation configs (large dilations on small multi-scale crops) rely on it.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, trunc_normal_

from zoo_kernels.neighborhood import na2d

from ._checks import check_bool, check_channels_last, check_drop, check_num_heads, check_qk_scale, check_size_pair
from .partition import pad_needed

__all__ = ['NeighborhoodAttention2d', 'na_pad_size']


def na_pad_size(size: Tuple[int, int], kernel_size: Tuple[int, int], dilation: Tuple[int, int]) -> Tuple[int, int]:
    """Bottom and right zero padding that makes a ``size`` map hold one ``kernel_size * dilation`` window.

    Args:
        size: ``(H, W)`` of the token map.
        kernel_size: ``(kh, kw)``.
        dilation: ``(dh, dw)``.

    Returns:
        ``(pad_bottom, pad_right)``, zero on an axis already at least ``k * d`` long.
    """
    return (
        max(0, kernel_size[0] * dilation[0] - size[0]),
        max(0, kernel_size[1] * dilation[1] - size[1]),
    )


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class NeighborhoodAttention2d(nn.Module):
    """Multi-head 2-D neighborhood attention with the legacy relative positional bias, channels-last.

    Each token attends to the ``kernel_size**2`` tokens of its (dilated) neighbourhood; logits are
    ``scale * q.k + rpb[offset]`` with the bias indexed by the in-group offset ``key - query + kernel_size - 1``.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: Union[int, Tuple[int, int]] = 7,
            dilation: Union[int, Tuple[int, int]] = 1,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            rel_pos_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the input and output tokens.
            num_heads: attention heads; must divide ``dim``.
            kernel_size: neighbourhood size per axis, >= 2 (odd when ``rel_pos_bias``).
            dilation: dilation per axis, >= 1.
            qkv_bias: add a bias to the ``qkv`` projection.
            qk_scale: logit scale; default ``head_dim ** -0.5``.
            rel_pos_bias: learn the ``rpb`` table ``[num_heads, 2*kh - 1, 2*kw - 1]`` (NAT/DiNAT have it).
            attn_drop: attention-probability dropout. Only 0 is supported: the fused NA op never materialises
                the probabilities (every released NAT/DiNAT config uses 0).
            proj_drop: dropout after the output projection.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside the values above, naming it.
        """
        super().__init__()
        check_bool('qkv_bias', qkv_bias)
        check_bool('rel_pos_bias', rel_pos_bias)
        dd = {'device': device, 'dtype': dtype}
        check_num_heads(dim, num_heads)
        kernel_size = check_size_pair('kernel_size', kernel_size)
        dilation = check_size_pair('dilation', dilation)
        if any(k < 2 for k in kernel_size) or (rel_pos_bias and any(k % 2 == 0 for k in kernel_size)):
            raise ValueError(
                f'kernel_size must be >= 2 (and odd with rel_pos_bias=True), got kernel_size={kernel_size}')
        if any(d < 1 for d in dilation):
            raise ValueError(f'dilation must be >= 1, got dilation={dilation}')
        check_qk_scale(qk_scale)
        check_drop('proj_drop', proj_drop)
        if attn_drop != 0:
            raise ValueError(
                f'attn_drop must be 0: neighborhood attention runs fused and has no attention dropout, '
                f'got attn_drop={attn_drop}')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.scale = qk_scale or self.head_dim ** -0.5

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size[0] - 1, 2 * kernel_size[1] - 1, **dd))
            trunc_normal_(self.rpb, std=.02)
        else:
            self.register_parameter('rpb', None)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend within each token's neighbourhood.

        Args:
            x: ``[B, H, W, dim]`` tokens, any ``H, W >= 1``.

        Returns:
            ``[B, H, W, dim]``.
        """
        check_channels_last(x, self.dim, self.qkv.weight)
        B, H, W, C = x.shape
        pad_b, pad_r = na_pad_size((H, W), self.kernel_size, self.dilation)
        if pad_needed(pad_b, pad_r):
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        q, k, v = self.qkv(x).reshape(B, Hp, Wp, 3, self.num_heads, self.head_dim).unbind(3)
        if torch.jit.is_scripting():
            x = torch.ops.zoo.neighborhood_attention(
                q, k, v, list(self.kernel_size), list(self.dilation), self.rpb, self.scale)
        else:
            x = self._na2d(q, k, v)
        x = x.reshape(B, Hp, Wp, C)
        if pad_needed(pad_b, pad_r):
            x = x[:, :H, :W]
        x = self.proj(x)
        return self.proj_drop(x)

    @torch.jit.unused
    def _na2d(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # eager: the functional API (FLOP counting swaps it); scripted code calls the same API as a dispatcher op
        return na2d(q, k, v, self.kernel_size, dilation=self.dilation, rpb=self.rpb, scale=self.scale)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, '
                f'dilation={self.dilation}, rel_pos_bias={self.rpb is not None}')
