"""HiLo attention (LITv2), channels-last, any map size.

HiLo splits the heads of one attention layer in two groups (paper: https://arxiv.org/abs/2205.13213; official code
ziplab/LITv2 ``classification/models/attentions.py`` ``HiLo``):

* Hi-Fi (high frequency): ``num_heads - l_heads`` heads attend inside non-overlapping ``s x s`` windows
  (``h_qkv`` Linear(C, 3 h_dim), ``h_proj`` Linear(h_dim, h_dim));
* Lo-Fi (low frequency): ``l_heads = int(num_heads * alpha)`` heads attend globally from every token to the keys and
  values of the ``s x s`` average-pooled map (``l_q`` Linear(C, l_dim), ``l_kv`` Linear(C, 2 l_dim) on the pooled
  input, ``l_proj`` Linear(l_dim, l_dim)).

The output is ``cat([hifi, lofi], -1)``: Hi-Fi channels first. Both branches scale the logits by ``head_dim ** -0.5``.
``alpha = 0`` leaves only Hi-Fi (no ``l_*`` parameters), ``alpha = 1`` only Lo-Fi (no ``h_*``); ``window_size = 1``
is plain multi-head self-attention through ``l_q`` / ``l_kv`` / ``l_proj`` with every head, whatever ``alpha``
(LITv2's last stage). Parameter names and shapes are the official ones, so the parameter count depends on ``alpha``
(two separate output projections), as in the paper's alpha ablation.

Any map size. Where ``s`` divides the map this is exactly the official classification code. Elsewhere it follows
the official detection / segmentation backbones (``detection/mmdet/models/backbones/litv2.py``), which ran the same
checkpoints on arbitrary image sizes: the normed map is zero-padded on the bottom/right to multiples of ``s``, Hi-Fi
windows include the zero tokens as keys (their k and v are the ``h_qkv`` biases), the Lo-Fi pooled keys are plain
``s x s`` means of the padded map (zeros count in the mean of the edge cells), and the output is cropped back. A map
smaller than the window is one padded window. Queries of padded positions are never computed here (their outputs
would be cropped), and ``proj`` runs on the real tokens only.

Attention runs through ``F.scaled_dot_product_attention`` by default (``fused_attn``, timm's switch), except Hi-Fi
windows of at most 16 tokens, where batched matmuls are faster on CPU; with ``fused_attn = False`` it is always the
explicit ``softmax(q k^T * scale) v`` (the fvcore GMACs counter switches to it, so
the matmuls are counted as the official code's).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, use_fused_attn

from ._checks import (
    check_bool,
    check_channels_last,
    check_drop,
    check_input_dtype,
    check_nonempty,
    check_num_heads,
    check_qk_scale,
)
from .partition import pad_needed

__all__ = ['HiLoAttentionCl', 'hilo_head_split']


def hilo_head_split(num_heads: int, alpha: float, window_size: int) -> tuple:
    """``(l_heads, h_heads)``: Lo-Fi and Hi-Fi heads of a HiLo layer, as the official code splits them.

    ``l_heads = int(num_heads * alpha)`` (the official float expression: ``int(12 * 0.7) = 8``), the rest Hi-Fi;
    ``window_size = 1`` gives every head to Lo-Fi (plain MSA).

    Raises:
        ValueError: ``alpha`` outside [0, 1], ``num_heads`` or ``window_size`` below 1, naming it.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0. <= alpha <= 1.:
        raise ValueError(f'alpha must be a float in [0, 1] (the share of Lo-Fi heads), got alpha={alpha!r}')
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f'window_size must be an int >= 1, got window_size={window_size!r}')
    if num_heads < 1:
        raise ValueError(f'num_heads must be >= 1, got num_heads={num_heads}')
    if window_size == 1:
        return num_heads, 0
    l_heads = int(num_heads * alpha)
    return l_heads, num_heads - l_heads


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class HiLoAttentionCl(nn.Module):
    """HiLo attention on a channels-last map ``[B, H, W, C]`` of any size (see the module docstring)."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            window_size: int = 2,
            alpha: float = 0.5,
            qkv_bias: bool = False,
            qk_scale: Optional[float] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the input and output.
            num_heads: heads of both groups together; must divide ``dim``.
            window_size: ``s``: the Hi-Fi window and the Lo-Fi pooling kernel (1: plain MSA).
            alpha: share of Lo-Fi heads, in [0, 1] (``int(num_heads * alpha)`` heads).
            qkv_bias: biases in ``h_qkv``, ``l_q`` and ``l_kv`` (the projections always have one).
            qk_scale: logit scale, default ``head_dim ** -0.5``.
            attn_drop: attention-probability dropout (the official layer accepts and ignores it; default 0).
            proj_drop: dropout after the output (the official layer accepts and ignores it; default 0).
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: ``alpha`` outside [0, 1], ``window_size`` below 1, ``num_heads`` not dividing ``dim`` or a
                non-positive ``qk_scale``, naming the argument.
        """
        super().__init__()
        check_bool('qkv_bias', qkv_bias)
        dd = {'device': device, 'dtype': dtype}
        check_num_heads(dim, num_heads)
        check_qk_scale(qk_scale)
        check_drop('attn_drop', attn_drop)
        check_drop('proj_drop', proj_drop)
        self.l_heads, self.h_heads = hilo_head_split(num_heads, alpha, window_size)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.l_dim = self.l_heads * self.head_dim
        self.h_dim = self.h_heads * self.head_dim
        self.ws = window_size
        self.alpha = alpha
        self.scale = qk_scale or self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

        if self.l_heads > 0:
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias, **dd)
            self.l_kv = nn.Linear(dim, self.l_dim * 2, bias=qkv_bias, **dd)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim, **dd)
        if self.h_heads > 0:
            self.h_qkv = nn.Linear(dim, self.h_dim * 3, bias=qkv_bias, **dd)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim, **dd)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fused: bool = True) -> torch.Tensor:
        if self.fused_attn and fused:
            return F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop if self.training else 0., scale=self.scale)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        if self.training and self.attn_drop > 0.:
            attn = F.dropout(attn, self.attn_drop)
        return attn @ v

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention of the Hi-Fi heads: ``[B, Hp, Wp, C]`` (padded to multiples of ``s``) ->
        ``[B, Hp, Wp, h_dim]`` before ``h_proj``."""
        B, Hp, Wp, C = x.shape
        s = self.ws
        nh, nw = Hp // s, Wp // s
        qkv = self.h_qkv(x)  # [B, Hp, Wp, 3 * h_dim]
        # [B, nh, s, nw, s, 3, heads, hd] -> [3, B, nh, nw, heads, s * s, hd]
        qkv = qkv.view(B, nh, s, nw, s, 3, self.h_heads, self.head_dim).permute(5, 0, 1, 3, 6, 2, 4, 7)
        qkv = qkv.reshape(3, B * nh * nw, self.h_heads, s * s, self.head_dim)
        # windows of up to 16 tokens: batched matmuls beat SDPA's per-window kernel on CPU (3x at s = 2)
        out = self._attend(qkv[0], qkv[1], qkv[2], fused=s * s > 16)  # [B * nh * nw, heads, s * s, hd]
        out = out.view(B, nh, nw, self.h_heads, s, s, self.head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(B, Hp, Wp, self.h_dim)

    def lofi(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Global attention of the Lo-Fi heads to pooled keys: ``[B, Hp, Wp, C]`` -> ``[B, H, W, l_dim]`` before
        ``l_proj`` (queries of the real ``H x W`` tokens only)."""
        H, W = size
        B, Hp, Wp, C = x.shape
        xq = x[:, :H, :W] if pad_needed(Hp - H, Wp - W) else x
        q = self.l_q(xq).view(B, H * W, self.l_heads, self.head_dim).transpose(1, 2)
        if self.ws > 1:
            pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), self.ws).flatten(2).transpose(1, 2)  # [B, n, C]
        else:
            pooled = x.reshape(B, Hp * Wp, C)
        kv = self.l_kv(pooled).view(B, -1, 2, self.l_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = self._attend(q, kv[0], kv[1])  # [B, heads, H * W, hd]
        return out.transpose(1, 2).reshape(B, H, W, self.l_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]``, any ``H, W >= 1``."""
        check_channels_last(x, self.dim)
        check_nonempty(x)
        if not torch.jit.is_scripting():  # Lo-Fi or Hi-Fi parameters alone exist at alpha 1 / 0
            check_input_dtype(x, next(self.parameters()))
        B, H, W, C = x.shape
        s = self.ws
        pad_b, pad_r = -H % s, -W % s
        xp = F.pad(x, (0, 0, 0, pad_r, 0, pad_b)) if pad_needed(pad_b, pad_r) else x
        outs: List[torch.Tensor] = []
        # hasattr, not the head counts: TorchScript compiles only the branch of the projections that exist
        if hasattr(self, 'h_qkv'):
            hi = self.hifi(xp)
            if pad_needed(pad_b, pad_r):
                hi = hi[:, :H, :W]
            outs.append(self.h_proj(hi))
        if hasattr(self, 'l_q'):
            outs.append(self.l_proj(self.lofi(xp, (H, W))))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return self.proj_drop(out)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, window_size={self.ws}, alpha={self.alpha}, '
                f'l_heads={self.l_heads}, h_heads={self.h_heads}')

