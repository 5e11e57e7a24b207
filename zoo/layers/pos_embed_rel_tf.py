"""MaxViT's relative position bias (the TensorFlow layout, timm's ``RelPosBiasTf``).

A learned table ``relative_position_bias_table [heads, 2*wh - 1, 2*ww - 1]`` (timm's name and shape, so timm's
``maxvit_*_tf`` checkpoints load as they are) read **key minus query**, as the official TF code's one-hot lookups
(``ret[n, m, v] = 1{m - n + L - 1 = v}``, ``n`` the query and ``m`` the key position)::

    bias[h, q, k] = table[h, yk - yq + wh - 1, xk - xq + ww - 1]

The official code and timm build the ``[heads, N, N]`` bias with two einsums against one-hot lookup tensors; the
default here is one gather at :func:`~zoo.layers.relative_position_index_2d` (NAT's key-minus-query index, the same
convention), the same values at a fraction of the cost. ``get_bias(one_hot=True)`` builds it the official way: the
explicit attention path uses it so that fvcore counts the lookup einsums as the published and timm GMACs do (up to
1 % of MaxViT-T's total at 512 px).

A window smaller than the table (a map smaller than the window, see :class:`~zoo.layers.PartitionAttentionCl`) reads
the central ``[2*h - 1, 2*w - 1]`` part: the bias of every (query, key) pair is that of the same offset in the full
window, so attending over an ``h x w`` map equals attending over the padded ``wh x ww`` window with the padded keys
masked out.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import register_notrace_module, to_2tuple
from timm.layers.pos_embed_rel import reindex_2d_einsum_lookup

from ._checks import shape_str
from .attention import relative_position_index_2d

__all__ = ['RelPosBiasTf']


def _one_hot_lookup(length: int, window: int, device: Optional[torch.device] = None,
                    dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``[length, length, 2*window - 1]`` with ``[q, k, v] = 1{k - q + window - 1 = v}`` (timm's
    ``generate_lookup_tensor(length, window - 1)``, without its Python loop)."""
    pos = torch.arange(length, device=device)
    offset = pos[None, :, None] - pos[:, None, None] + window - 1
    return (offset == torch.arange(2 * window - 1, device=device)).to(dtype)


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class RelPosBiasTf(nn.Module):
    """Learned relative position bias of a ``wh x ww`` window, MaxViT's (TF) table ``[heads, 2*wh - 1, 2*ww - 1]``."""

    def __init__(self, window_size: Union[int, Tuple[int, int]], num_heads: int, device=None, dtype=None):
        """
        Args:
            window_size: ``(wh, ww)`` tokens of the largest window (an int for a square window).
            num_heads: attention heads, one bias per head.
            device: device of the table.
            dtype: dtype of the table.

        Raises:
            ValueError: a window size or ``num_heads`` below 1, naming it.
        """
        super().__init__()
        window = tuple(int(w) for w in to_2tuple(window_size))
        if len(window) != 2 or any(w < 1 for w in window):
            raise ValueError(f'window_size must be an int or (wh, ww) pair of ints >= 1, got window_size={window_size}')
        if num_heads < 1:
            raise ValueError(f'num_heads must be >= 1, got num_heads={num_heads}')
        self.window_size = window
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.empty(num_heads, 2 * window[0] - 1, 2 * window[1] - 1, device=device, dtype=dtype))
        nn.init.normal_(self.relative_position_bias_table, std=.02)
        # derived index per (size, device), built on first use (a model built on 'meta' needs no buffer re-init)
        self._index_cache: Dict[Tuple[int, int, str], torch.Tensor] = {}
        self._lookup_cache: Dict[Tuple[int, int, str, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}

    def relative_position_index(self, size: Tuple[int, int]) -> torch.Tensor:
        """``[h*w, h*w]`` long index into the flattened ``[2*wh - 1, 2*ww - 1]`` table for an ``h x w`` window."""
        device = self.relative_position_bias_table.device
        if torch.jit.is_scripting():  # no cache in TorchScript: the index is made per call
            return relative_position_index_2d(size, self.window_size, device=device)
        return self._cached_index(size, device)

    @torch.jit.unused
    def _cached_index(self, size: Tuple[int, int], device: torch.device) -> torch.Tensor:
        key = (size[0], size[1], str(device))
        index = self._index_cache.get(key)
        if index is None:
            # made outside inference mode: the cached index must be usable by a later training step
            with torch.inference_mode(False):
                index = relative_position_index_2d(size, self.window_size, device=device)
            self._index_cache[key] = index
        return index

    def _one_hot_lookups(self, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """timm's / TF's one-hot lookups ``[h, h, 2*wh - 1]`` and ``[w, w, 2*ww - 1]`` for an ``h x w`` window."""
        table = self.relative_position_bias_table
        if torch.jit.is_scripting():  # no cache in TorchScript
            return (_one_hot_lookup(size[0], self.window_size[0], device=table.device, dtype=table.dtype),
                    _one_hot_lookup(size[1], self.window_size[1], device=table.device, dtype=table.dtype))
        return self._cached_lookups(size)

    @torch.jit.unused
    def _cached_lookups(self, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        table = self.relative_position_bias_table
        key = (size[0], size[1], str(table.device), table.dtype)
        lookups = self._lookup_cache.get(key)
        if lookups is None:
            with torch.inference_mode(False):
                lookups = tuple(_one_hot_lookup(n, w, device=table.device, dtype=table.dtype)
                                for n, w in zip(size, self.window_size))
            self._lookup_cache[key] = lookups
        return lookups

    def get_bias(self, size: Optional[Tuple[int, int]] = None, one_hot: bool = False) -> torch.Tensor:
        """The bias ``[heads, N, N]`` (query, key) of an ``h x w`` window, ``N = h * w``.

        Args:
            size: ``(h, w)`` at most ``window_size`` per axis; default the full window.
            one_hot: build it with the official two einsums against one-hot lookups instead of a gather (the same
                values; visible to fvcore as matmul work, as in the published GMACs).

        Raises:
            ValueError: ``size`` larger than ``window_size`` or below 1.
        """
        size = self.window_size if size is None else (int(size[0]), int(size[1]))
        if not (1 <= size[0] <= self.window_size[0] and 1 <= size[1] <= self.window_size[1]):
            raise ValueError(f'size must be between (1, 1) and window_size={self.window_size}, got size={size}')
        if one_hot:
            return reindex_2d_einsum_lookup(self.relative_position_bias_table, *size, *self._one_hot_lookups(size))
        index = self.relative_position_index(size)
        return self.relative_position_bias_table.flatten(1)[:, index]

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        """``attn + bias`` for logits ``[..., heads, N, N]`` of the full window."""
        n = self.window_size[0] * self.window_size[1]
        if attn.dim() < 3 or attn.shape[-3] != self.num_heads or attn.shape[-2] != n or attn.shape[-1] != n:
            raise ValueError(f'attn must have shape [..., {self.num_heads}, {n}, {n}], got {shape_str(attn)}')
        return attn + self.get_bias()

    def extra_repr(self) -> str:
        return f'window_size={self.window_size}, num_heads={self.num_heads}'
