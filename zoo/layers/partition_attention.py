"""Multi-head self-attention inside the windows of a block or grid partition (MaxViT's block and grid attention).

:class:`PartitionAttentionCl` is the token mixer of timm's ``maxxvit.PartitionAttentionCl`` (its ``AttentionCl`` with
the partition around it); the norms, MLP and residuals come from :class:`~zoo.layers.PreNormBlockCl`. On a
channels-last map ``[B, H, W, C]`` it splits the map into ``partition_size`` windows, either contiguous
(``'block'``: :func:`~zoo.layers.window_partition`) or strided over the whole map (``'grid'``:
:func:`~zoo.layers.grid_partition`), attends inside each window with MaxViT's relative position bias
(:class:`~zoo.layers.RelPosBiasTf`) and puts the tokens back. Parameters: ``qkv``,
``rel_pos.relative_position_bias_table``, ``proj`` (timm's names and shapes).

Any map size. Along an axis where the map is smaller than the partition, the partition shrinks to the map (the whole
axis is one window, read with the central part of the bias table). Along an axis the partition does not divide, the
map is zero-padded to the next multiple (inside :func:`~zoo.layers.window_partition` /
:func:`~zoo.layers.grid_partition`) and the padded tokens are masked out as keys; their outputs are cropped. So a
real token's output never depends on the padding, and both rules give what attending over the real tokens of a
(full-size, padded) window would. Where the partition divides the map, this is exactly timm's computation.

Cost: where the partition divides the map, the work and the copies are timm's (one partition copy of the tokens,
one reverse copy of the output), except that the bias is a gather and reaches SDPA as a 4-D mask (CPU SDPA takes its
flash kernel; timm's 3-D bias falls back to the math path). On a padded map ``qkv`` also runs on the padded tokens
and the bias becomes a per-window mask; ``proj`` always runs after the reverse, on the real tokens only.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, to_2tuple, use_fused_attn

from ._checks import check_bool, check_channels_last, check_drop
from .partition import grid_partition_, grid_reverse_, is_exporting, padded_size_, window_partition_, window_reverse_
from .pos_embed_rel_tf import RelPosBiasTf

__all__ = ['PartitionAttentionCl']

_PARTITION_TYPES = ('block', 'grid')


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class PartitionAttentionCl(nn.Module):
    """Window ('block') or grid attention with MaxViT's relative position bias, channels-last, any map size."""

    def __init__(
            self,
            dim: int,
            partition_size: Union[int, Tuple[int, int]] = 7,
            partition_type: str = 'block',
            dim_head: int = 32,
            qkv_bias: bool = True,
            head_first: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the input and output tokens.
            partition_size: ``(ph, pw)`` tokens per window: the window size for 'block', the grid size for 'grid'.
            partition_type: 'block' (contiguous windows) or 'grid' (windows of tokens strided over the map).
            dim_head: channels per head; must divide ``dim`` (heads = ``dim // dim_head``).
            qkv_bias: bias on the ``qkv`` and ``proj`` projections.
            head_first: ``qkv`` output channels ordered head-major (``[heads, (q, k, v), dim_head]``, timm's
                default) instead of ``[(q, k, v), heads, dim_head]`` (the TF MaxViT weights, False).
            attn_drop: attention-probability dropout.
            proj_drop: dropout after the output projection.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside the values above, naming it.
        """
        super().__init__()
        check_bool('qkv_bias', qkv_bias)
        check_bool('head_first', head_first)
        dd = {'device': device, 'dtype': dtype}
        if dim < 1:
            raise ValueError(f'dim must be >= 1, got dim={dim}')
        if dim_head < 1 or dim % dim_head:
            raise ValueError(f'dim_head must be >= 1 and divide dim={dim}, got dim_head={dim_head}')
        size = tuple(int(s) for s in to_2tuple(partition_size))
        if len(size) != 2 or any(s < 1 for s in size):
            raise ValueError(f'partition_size must be an int or (h, w) pair of ints >= 1, '
                             f'got partition_size={partition_size!r}')
        if partition_type not in _PARTITION_TYPES:
            raise ValueError(f'partition_type must be one of {_PARTITION_TYPES}, got partition_type={partition_type!r}')
        check_drop('attn_drop', attn_drop)
        check_drop('proj_drop', proj_drop)
        self.dim = dim
        self.partition_size = size
        self.partition_type = partition_type
        self.num_heads = dim // dim_head
        self.dim_head = dim_head
        self.head_first = head_first
        self.scale = dim_head ** -0.5
        self.fused_attn = use_fused_attn()

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.rel_pos = RelPosBiasTf(size, self.num_heads, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def _partition(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        if self.partition_type == 'block':
            return window_partition_(x, size, (0, 0))
        return grid_partition_(x, size)

    def _reverse(self, windows: torch.Tensor, size: Tuple[int, int], map_size: Tuple[int, int]) -> torch.Tensor:
        if self.partition_type == 'block':
            return window_reverse_(windows, size, map_size, (0, 0))
        return grid_reverse_(windows, size, map_size)

    def _key_mask(self, map_size: Tuple[int, int], size: Tuple[int, int], dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
        """``[windows, 1, 1, N]`` additive mask: 0 for real keys, -inf for padded ones."""
        real = torch.ones(1, *map_size, 1, dtype=dtype, device=device)
        real = self._partition(real, size).flatten(1)  # [windows, N], padded tokens are 0
        return torch.zeros_like(real).masked_fill_(real == 0, float('-inf'))[:, None, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend inside the windows of the partition.

        Args:
            x: ``[B, H, W, dim]`` (normed tokens), any ``H, W >= 1``.

        Returns:
            ``[B, H, W, dim]``.

        Raises:
            ValueError: ``x`` is not ``[B, H, W, dim]``.
        """
        check_channels_last(x, self.dim, self.qkv.weight)
        return self._forward(x, is_exporting())

    def _forward(self, x: torch.Tensor, full_partition: bool) -> torch.Tensor:
        """:meth:`forward`; ``full_partition`` (while ``torch.export`` traces, for a graph that holds at every image
        size): never shrink the partition to the map but pad the map to it and mask the padded keys, which computes
        the same values (the bias of the shrunk partition is the full one's entries at the real tokens' offsets)."""
        B, H, W, C = x.shape
        if full_partition:
            size = self.partition_size
        else:
            size = (min(self.partition_size[0], H), min(self.partition_size[1], W))
        n = size[0] * size[1]
        windows = self._partition(x, size)  # [B * windows, ph, pw, C]
        qkv = self.qkv(windows.reshape(-1, n, C))
        if self.head_first:
            q, k, v = qkv.view(-1, n, self.num_heads, 3 * self.dim_head).transpose(1, 2).chunk(3, dim=-1)
        else:
            q, k, v = qkv.view(-1, n, 3, self.num_heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)
        # the explicit path builds the bias as the official code does, so fvcore counts it as the published GMACs;
        # 4-D, so that CPU SDPA takes its flash kernel (a 3-D mask sends it to the slow math path)
        bias = self.rel_pos.get_bias(size, one_hot=not self.fused_attn).to(q.dtype).unsqueeze(0)  # [1, heads, N, N]
        if full_partition or padded_size_((H, W), size) != (H, W):
            mask = self._key_mask((H, W), size, q.dtype, q.device)  # [windows, 1, 1, N]
            bias = (bias + mask).repeat(B, 1, 1, 1)  # [B * windows, heads, N, N]
        if self.fused_attn:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0., scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            attn = self.attn_drop(attn.softmax(dim=-1))
            out = attn @ v
        out = self._reverse(out.transpose(1, 2).reshape(-1, size[0], size[1], C), size, (H, W))
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, partition_type={self.partition_type!r}, partition_size={self.partition_size}, '
                f'num_heads={self.num_heads}')
