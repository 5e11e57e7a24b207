"""Attention over spatially reduced keys and values (PVT's SRA) and the token pooling it shares with other layers.

* :func:`spatial_pool_cl`: average / max pooling of a channels-last map, by a kernel (= stride) or adaptively to a
  fixed output size. PVTv2's 'linear' SRA, BiFormer's key/value downsampling modes and LITv2's Lo-Fi keys use it.
* :class:`SpatialReductionAttentionCl`: PVTv1/v2 attention. Queries come from every token; keys and values from a
  reduced map, either a ``sr_ratio x sr_ratio`` stride-``sr_ratio`` conv ``sr`` then ``norm`` (PVTv1/v2), or, with
  ``linear=True`` (PVTv2-b*-li), an adaptive average pool to ``pool_size x pool_size`` then a 1x1 conv ``sr``,
  ``norm`` and GELU. Parameter names and shapes are the official ones (``q``, ``kv``, ``sr``, ``norm``, ``proj``), as
  in timm's ``timm.models.pvt_v2.Attention``, which this layer equals on ``[B, H*W, C]`` tokens.

Any input size: the ``sr`` conv floors sizes not divisible by ``sr_ratio`` (the official behaviour); a map smaller
than ``sr_ratio`` on an axis, where the official conv fails, is zero-padded on the bottom/right up to ``sr_ratio``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, use_fused_attn

from ._checks import check_bool, check_channels_last, check_drop, check_nonempty, check_num_heads, check_qk_scale
from .partition import pad_needed

__all__ = ['SpatialReductionAttentionCl', 'spatial_pool_cl', 'POOL_MODES']

POOL_MODES = ('avg', 'max', 'ada_avg', 'ada_max')


def spatial_pool_cl(x: torch.Tensor, mode: str, size: int) -> torch.Tensor:
    """Pool a channels-last map.

    Args:
        x: ``[B, H, W, C]``.
        mode: 'avg' / 'max' (kernel = stride = ``size``, sizes floored, as ``F.avg_pool2d(x, size)``) or
            'ada_avg' / 'ada_max' (adaptive pooling to ``size x size``, as ``nn.AdaptiveAvgPool2d(size)``).
        size: the kernel, or the output size of the adaptive modes.

    Returns:
        ``[B, h, w, C]``.

    Raises:
        ValueError: ``mode`` not one of :data:`POOL_MODES` or ``size`` below 1, naming it.
    """
    if mode not in ['avg', 'max', 'ada_avg', 'ada_max']:  # POOL_MODES, spelled out for TorchScript
        raise ValueError(f"mode must be one of ('avg', 'max', 'ada_avg', 'ada_max'), got mode='{mode}'")
    if size < 1:
        raise ValueError(f'size must be >= 1, got size={size}')
    x = x.permute(0, 3, 1, 2)
    if mode == 'avg':
        x = F.avg_pool2d(x, size)
    elif mode == 'max':
        x = F.max_pool2d(x, size)
    elif mode == 'ada_avg':
        x = F.adaptive_avg_pool2d(x, size)
    else:
        x = F.adaptive_max_pool2d(x, size)
    return x.permute(0, 2, 3, 1)


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class SpatialReductionAttentionCl(nn.Module):
    """PVT's spatial-reduction attention (SRA), channels-last: full-resolution queries, reduced keys and values."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            sr_ratio: int = 1,
            linear: bool = False,
            pool_size: int = 7,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the input and output.
            num_heads: attention heads; must divide ``dim``.
            sr_ratio: kernel and stride of the reduction conv ``sr`` (1: no reduction, no ``sr`` / ``norm``).
                Ignored with ``linear=True``.
            linear: PVTv2's linear SRA: adaptive average pool to ``pool_size``, 1x1 conv ``sr``, ``norm``, act.
            pool_size: output size of the linear SRA's pooling.
            qkv_bias: biases in ``q`` and ``kv``.
            qk_scale: logit scale, default ``head_dim ** -0.5``.
            attn_drop: attention-probability dropout.
            proj_drop: dropout after ``proj``.
            norm_layer: channels-last norm after ``sr`` (official: ``nn.LayerNorm``, eps 1e-5).
            act_layer: activation of the linear SRA.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside the values above, naming it.
        """
        super().__init__()
        check_bool('linear', linear)
        check_bool('qkv_bias', qkv_bias)
        dd = {'device': device, 'dtype': dtype}
        check_num_heads(dim, num_heads)
        check_qk_scale(qk_scale)
        check_drop('attn_drop', attn_drop)
        check_drop('proj_drop', proj_drop)
        if sr_ratio < 1:
            raise ValueError(f'sr_ratio must be >= 1, got sr_ratio={sr_ratio}')
        if linear and pool_size < 1:
            raise ValueError(f'pool_size must be >= 1, got pool_size={pool_size}')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.sr_ratio = 1 if linear else sr_ratio
        self.linear = linear
        self.pool_size = pool_size
        self.fused_attn = use_fused_attn()

        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        if linear:
            self.sr = nn.Conv2d(dim, dim, kernel_size=1, **dd)
            self.norm = norm_layer(dim, **dd)
            self.act = act_layer()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, **dd)
            self.norm = norm_layer(dim, **dd)
            self.act = None
        else:
            self.sr = self.norm = self.act = None

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The map keys and values are projected from: ``[B, H, W, dim]`` -> ``[B, h, w, dim]``.

        ``(h, w)`` is ``(H, W)`` without reduction, ``(max(H, r) // r, max(W, r) // r)`` with ``sr_ratio = r``, and
        ``(pool_size, pool_size)`` for the linear SRA.
        """
        # branches on which optional modules exist (not on self.linear): TorchScript compiles only the taken one
        if self.sr is None:
            return x
        elif self.act is not None:  # the linear SRA (the only variant with an activation)
            x = spatial_pool_cl(x, 'ada_avg', self.pool_size)
            x = self.sr(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            return self.act(self.norm(x))
        else:
            r = self.sr_ratio
            pad_b, pad_r = max(0, r - x.shape[1]), max(0, r - x.shape[2])
            if pad_needed(pad_b, pad_r):
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            x = self.sr(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]``."""
        check_channels_last(x, self.dim, self.q.weight)
        check_nonempty(x)
        B, H, W, C = x.shape
        q = self.q(x).reshape(B, H * W, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(self.reduce(x)).reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0., scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(B, H, W, C)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}, linear={self.linear}'
