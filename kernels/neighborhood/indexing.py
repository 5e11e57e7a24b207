"""Window and relative-position-bias formulas of neighborhood attention, one axis at a time.

Every function here works on Python ints and on integer tensors alike, so the same formulas serve the
reference, the tiled torch path and the tests. Notation (see ``README.md`` in this folder):

* ``length`` L: size of the axis; ``dilation`` d splits it into d interleaved groups ``g = x mod d``.
* in-group coordinate ``x' = x // d``; group length ``L_g = ceil((L - g) / d)``.
* ``kernel_size`` k, ``stride`` s, ``is_causal``: the window of an in-group query ``x'`` is the
  half-open interval ``[window_start(x'), window_end(x'))`` of in-group keys.

Non-causal windows always hold exactly k keys: they are shifted, never truncated, at the borders. Causal
windows end at the query itself and hold at most k keys.
"""
from __future__ import annotations

import torch

__all__ = [
    'group_length',
    'window_leader',
    'window_start',
    'window_end',
    'rpb_index',
    'axis_neighbors',
]


def _minimum(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return min(a, b)


def _maximum(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))
    return max(a, b)


def group_length(length, dilation, group):
    """Number of tokens of dilation group ``group`` on an axis of ``length`` tokens: ceil((L - g) / d)."""
    return (length - group + dilation - 1) // dilation


def window_leader(pos, group_len: int, stride: int, is_causal: bool):
    """The query whose window a query at in-group position ``pos`` shares (stride groups of ``stride`` queries).

    Non-causal: the centre of the stride group (right of centre for even strides); causal: its last query.
    Clamped to the last token of the group. With ``stride == 1`` the leader is the query itself.
    """
    base = (pos // stride) * stride
    offset = stride - 1 if is_causal else stride // 2
    return _minimum(base + offset, group_len - 1)


def window_start(pos, group_len: int, kernel_size: int, stride: int = 1, is_causal: bool = False):
    """First in-group key of the window of in-group query ``pos``."""
    leader = window_leader(pos, group_len, stride, is_causal)
    if is_causal:
        return _maximum(leader - kernel_size + 1, 0)
    start = leader - kernel_size // 2
    return _minimum(_maximum(start, 0), group_len - kernel_size)


def window_end(pos, group_len: int, kernel_size: int, stride: int = 1, is_causal: bool = False):
    """One past the last in-group key of the window of in-group query ``pos``."""
    if is_causal:
        return pos + 1
    return window_start(pos, group_len, kernel_size, stride, is_causal) + kernel_size


def rpb_index(query_pos, key_pos, kernel_size: int):
    """Index into one axis of the legacy bias table ``[.., 2k - 1, ..]`` (in-group positions, odd k)."""
    return key_pos - query_pos + kernel_size - 1


def axis_neighbors(
        length: int,
        kernel_size: int,
        dilation: int = 1,
        stride: int = 1,
        is_causal: bool = False,
        device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every query's window on one axis, in original coordinates.

    Returns:
        keys: ``[L, k]`` long, the original coordinate of the a-th key of each query's window (the window
            is listed from its start; entries past a causal window's end repeat its last key).
        valid: ``[L, k]`` bool, False for the entries past the end of a causal window.
        bias_index: ``[L, k]`` long, the legacy RPB index of each (query, key) pair.
    """
    pos = torch.arange(length, device=device)
    group = pos % dilation
    local = pos // dilation
    glen = group_length(length, dilation, group)
    start = window_start(local, glen, kernel_size, stride, is_causal)
    end = window_end(local, glen, kernel_size, stride, is_causal)
    offsets = torch.arange(kernel_size, device=device)
    key_local = start[:, None] + offsets[None, :]
    valid = key_local < end[:, None]
    key_local = torch.minimum(key_local, end[:, None] - 1)
    keys = key_local * dilation + group[:, None]
    bias_index = rpb_index(local[:, None], key_local, kernel_size)
    return keys, valid, bias_index
