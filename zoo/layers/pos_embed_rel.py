"""Swin-convention relative position bias over the tokens of a window (Swin, Agent-/InLine-Swin 'S' blocks, MaxViT).

:class:`RelPosBias` has timm's ``timm.layers.RelPosBias`` semantics (without class tokens): a learned table
``relative_position_bias_table [(2*wh - 1) * (2*ww - 1), heads]`` (Swin's parameter name and shape) read at Swin's
``relative_position_index [N, N]``, ``N = wh * ww`` tokens in row-major order::

    index[q, k] = (yq - yk + wh - 1) * (2*ww - 1) + (xq - xk + ww - 1)        # query minus key

The index is timm's ``gen_relative_position_index``; it is derived, not learned: official Swin checkpoints carry it
as a buffer, which the filters drop.

NAT's ``rpb [heads, 2*kh - 1, 2*kw - 1]`` (neighborhood attention, :class:`~zoo.layers.RpbAttention2d`) is indexed
the opposite way, **key minus query**: ``rpb[h, yk - yq + kh - 1, xk - xq + kw - 1]``. The same bias as a Swin table
is ``rpb.flip(1, 2)`` flattened (:func:`rel_pos_table_from_nat`); ViT-RPB's official index is Swin's index flipped
both ways for the same reason.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import register_notrace_module, trunc_normal_
from timm.layers.pos_embed_rel import gen_relative_position_index

from ._checks import shape_str
from .attention import relative_position_index_2d

__all__ = ['RelPosBias', 'rel_pos_table_from_nat']


def rel_pos_table_from_nat(rpb: torch.Tensor) -> torch.Tensor:
    """A NAT-convention bias ``rpb [heads, 2*kh - 1, 2*kw - 1]`` (key minus query) as a Swin-convention table.

    Returns:
        ``[(2*kh - 1) * (2*kw - 1), heads]``: the ``relative_position_bias_table`` that gives every (query, key)
        pair of a ``kh x kw`` window the same bias.

    Raises:
        ValueError: ``rpb`` is not 3-D with odd sizes on its last two dims.
    """
    if rpb.dim() != 3 or rpb.shape[1] % 2 == 0 or rpb.shape[2] % 2 == 0:
        raise ValueError(f'rpb must have shape [heads, 2*kh - 1, 2*kw - 1], got {tuple(rpb.shape)}')
    return rpb.flip(1, 2).flatten(1).t()


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class RelPosBias(nn.Module):
    """Learned relative position bias of a ``wh x ww`` window, Swin's table and index (timm's ``RelPosBias``)."""

    def __init__(self, window_size: Union[int, Tuple[int, int]], num_heads: int, device=None, dtype=None):
        """
        Args:
            window_size: ``(wh, ww)`` tokens of the window (an int for a square window).
            num_heads: attention heads, one bias per head.
            device: device of the table.
            dtype: dtype of the table.

        Raises:
            ValueError: a window size or ``num_heads`` below 1, naming it.
        """
        super().__init__()
        window_size = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
        if len(window_size) != 2 or any(int(w) < 1 for w in window_size):
            raise ValueError(
                f'window_size must be an int or (wh, ww) pair of ints >= 1, got window_size={window_size}')
        if num_heads < 1:
            raise ValueError(f'num_heads must be >= 1, got num_heads={num_heads}')
        self.window_size = tuple(int(w) for w in window_size)
        self.num_heads = num_heads
        self.window_area = self.window_size[0] * self.window_size[1]
        num_relative_distance = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(num_relative_distance, num_heads, device=device, dtype=dtype))
        trunc_normal_(self.relative_position_bias_table, std=.02)
        # derived index, built on first use per device (so a model built on 'meta' needs no buffer re-init)
        self._index_cache: Dict[str, torch.Tensor] = {}

    __jit_unused_properties__ = ['relative_position_index']  # the cached index: eager only

    @property
    def relative_position_index(self) -> torch.Tensor:
        """``[N, N]`` long index into the table (Swin's ``relative_position_index``)."""
        device = self.relative_position_bias_table.device
        index = self._index_cache.get(str(device))
        if index is None:
            # made outside inference mode: the cached index must be usable by a later training step
            with torch.inference_mode(False):
                index = gen_relative_position_index(self.window_size, device=device)
            self._index_cache[str(device)] = index
        return index

    def get_bias(self) -> torch.Tensor:
        """The bias ``[1, heads, N, N]`` (query, key), ready to add to ``[B, heads, N, N]`` logits."""
        if torch.jit.is_scripting():  # no index cache in TorchScript: the index is made per call
            # Swin's query-minus-key index is the transpose of the key-minus-query one (timm's is not scriptable)
            index = relative_position_index_2d(
                self.window_size, self.window_size, device=self.relative_position_bias_table.device).t()
        else:
            index = self.relative_position_index
        bias = self.relative_position_bias_table[index.reshape(-1)]  # the scripted index is a transpose
        return bias.view(self.window_area, self.window_area, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        """``attn + bias`` for logits ``[..., heads, N, N]``."""
        n = self.window_area
        if attn.dim() < 3 or attn.shape[-3] != self.num_heads or attn.shape[-2] != n or attn.shape[-1] != n:
            raise ValueError(f'attn must have shape [..., {self.num_heads}, {n}, {n}], got {shape_str(attn)}')
        return attn + self.get_bias()

    def extra_repr(self) -> str:
        return f'window_size={self.window_size}, num_heads={self.num_heads}'
