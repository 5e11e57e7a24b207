"""Global multi-head self-attention over a channels-last 2-D token map with a learned relative position bias.

:class:`RpbAttention2d` is the attention of the ViT-RPB baseline of the DiNAT paper: every token attends to every
token, with the NAT-style bias table ``rpb[heads, 2*Gh - 1, 2*Gw - 1]`` indexed by ``key - query + G - 1`` per axis
(the opposite sign of Swin's table). The table is sized for a ``grid_size`` token grid; any smaller grid uses the
central part of it, so inputs up to ``grid_size`` tokens per axis work.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, trunc_normal_, use_fused_attn

from ._checks import check_bool, check_channels_last, check_drop, check_num_heads, check_qk_scale, check_size_pair

__all__ = ['RpbAttention2d', 'relative_position_index_2d']


def relative_position_index_2d(
        size: Tuple[int, int], grid_size: Tuple[int, int], device: Optional[torch.device] = None) -> torch.Tensor:
    """Flat index into a ``[2*Gh - 1, 2*Gw - 1]`` table of ``key - query`` offsets for a row-major ``size`` map.

    Args:
        size: ``(H, W)`` tokens, at most ``grid_size`` per axis.
        grid_size: ``(Gh, Gw)`` the table was built for.

    Returns:
        ``[H*W, H*W]`` long tensor; entry ``[query, key]`` is ``(yk - yq + Gh - 1) * (2*Gw - 1) + xk - xq + Gw - 1``.
    """
    ys, xs = torch.meshgrid(
        torch.arange(size[0], device=device), torch.arange(size[1], device=device), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[None, :] - ys[:, None] + grid_size[0] - 1
    dx = xs[None, :] - xs[:, None] + grid_size[1] - 1
    return dy * (2 * grid_size[1] - 1) + dx


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class RpbAttention2d(nn.Module):
    """Global multi-head self-attention with a learned 2-D relative position bias (ViT-RPB), channels-last."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            grid_size: Union[int, Tuple[int, int]] = 14,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the input and output tokens.
            num_heads: attention heads; must divide ``dim``.
            grid_size: largest token grid ``(Gh, Gw)`` the bias table covers.
            qkv_bias: add a bias to the ``qkv`` projection.
            qk_scale: logit scale; default ``head_dim ** -0.5``.
            attn_drop: attention-probability dropout.
            proj_drop: dropout after the output projection.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside the values above, naming it.
        """
        super().__init__()
        check_bool('qkv_bias', qkv_bias)
        dd = {'device': device, 'dtype': dtype}
        check_num_heads(dim, num_heads)
        grid_size = check_size_pair('grid_size', grid_size)
        check_qk_scale(qk_scale)
        check_drop('attn_drop', attn_drop)
        check_drop('proj_drop', proj_drop)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.grid_size = grid_size
        self.scale = qk_scale or self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * grid_size[0] - 1, 2 * grid_size[1] - 1, **dd))
        trunc_normal_(self.rpb, std=.02)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self._index_cache: Dict[Tuple[int, int, str], torch.Tensor] = {}

    def _bias(self, size: Tuple[int, int]) -> torch.Tensor:
        if torch.jit.is_scripting():  # no index cache in TorchScript: the index is made per call
            return self.rpb.flatten(1)[:, relative_position_index_2d(size, self.grid_size, device=self.rpb.device)]
        return self._cached_bias(size)

    @torch.jit.unused
    def _cached_bias(self, size: Tuple[int, int]) -> torch.Tensor:
        key = (size[0], size[1], str(self.rpb.device))
        index = self._index_cache.get(key)
        if index is None:
            # made outside inference mode: the cached index must be usable by a later training step
            with torch.inference_mode(False):
                index = relative_position_index_2d(size, self.grid_size, device=self.rpb.device)
            self._index_cache[key] = index
        return self.rpb.flatten(1)[:, index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all tokens.

        Args:
            x: ``[B, H, W, dim]`` with ``H <= grid_size[0]`` and ``W <= grid_size[1]``.

        Returns:
            ``[B, H, W, dim]``.
        """
        check_channels_last(x, self.dim, self.qkv.weight)
        B, H, W, C = x.shape
        if H > self.grid_size[0] or W > self.grid_size[1]:
            raise ValueError(
                f'x has a {H}x{W} token grid but the bias table covers at most {self.grid_size[0]}x'
                f'{self.grid_size[1]}; build the model with a larger img_size')
        N = H * W
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self._bias((H, W)).unsqueeze(0).to(q.dtype)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0., scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, H, W, C)
        x = self.proj(x)
        return self.proj_drop(x)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, grid_size={self.grid_size}'
