"""Exact, readable neighborhood attention: the specification every backend is tested against.

It lists each query's neighbours explicitly (``[N, prod(k)]`` key indices), gathers them, and runs a
masked softmax in fp32 (fp64 for fp64 inputs). Memory grows with ``N * prod(k)``: tests and small inputs
only. No production path imports this module.
"""
from __future__ import annotations

import torch

from .indexing import axis_neighbors

__all__ = ['na_reference', 'neighbor_table']


def neighbor_table(
        spatial: tuple[int, ...],
        kernel_size: tuple[int, ...],
        dilation: tuple[int, ...],
        stride: tuple[int, ...],
        is_causal: tuple[bool, ...],
        device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Neighbours of every query of a row-major flattened map.

    Returns:
        keys: ``[N, K]`` long, flat index of each neighbour (``N = prod(spatial)``, ``K = prod(kernel_size)``,
            window offsets row-major).
        valid: ``[N, K]`` bool, False where a causal window is shorter than K.
        bias_index: one ``[N, K]`` long tensor per axis, the legacy RPB index on that axis.
    """
    rank = len(spatial)
    keys = torch.zeros((), dtype=torch.long, device=device)
    valid = torch.ones((), dtype=torch.bool, device=device)
    bias_index = []
    for axis in range(rank):
        axis_keys, axis_valid, axis_bias = axis_neighbors(
            spatial[axis], kernel_size[axis], dilation[axis], stride[axis], is_causal[axis], device=device)
        # the axis's query dim goes to position `axis`, its window dim to position `rank + axis`
        shape = [1] * (2 * rank)
        shape[axis], shape[rank + axis] = spatial[axis], kernel_size[axis]
        keys = keys * spatial[axis] + axis_keys.view(shape)
        valid = valid & axis_valid.view(shape)
        bias_index.append(axis_bias.view(shape))
    n, k = _prod(spatial), _prod(kernel_size)
    full = list(spatial) + list(kernel_size)
    keys = keys.expand(full).reshape(n, k)
    valid = valid.expand(full).reshape(n, k)
    bias_index = tuple(b.expand(full).reshape(n, k) for b in bias_index)
    return keys, valid, bias_index


def na_reference(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: tuple[int, ...],
        dilation: tuple[int, ...],
        stride: tuple[int, ...],
        is_causal: tuple[bool, ...],
        rpb: torch.Tensor | None,
        scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighborhood attention by explicit gather; arguments already validated and normalised.

    Args:
        query: ``[B, *spatial, heads, D]``.
        key: ``[B, *spatial, heads_kv, D]`` with ``heads % heads_kv == 0``.
        value: ``[B, *spatial, heads_kv, Dv]``.
        rpb: ``[heads, 2k_0 - 1, ...]`` or None, added to the scaled logits.

    Returns:
        ``(out, lse)``: out ``[B, *spatial, heads, Dv]`` in the query's dtype, lse ``[B, *spatial, heads]`` fp32.
    """
    batch, *spatial, heads, _ = query.shape
    heads_kv = key.shape[-2]
    n = _prod(spatial)
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    keys, valid, bias_index = neighbor_table(
        tuple(spatial), kernel_size, dilation, stride, is_causal, device=query.device)

    q = query.reshape(batch, n, heads, -1).to(compute)
    k = key.reshape(batch, n, heads_kv, -1).to(compute).repeat_interleave(heads // heads_kv, dim=2)
    v = value.reshape(batch, n, heads_kv, -1).to(compute).repeat_interleave(heads // heads_kv, dim=2)
    k_nb = k[:, keys]  # [B, N, K, heads, D]
    v_nb = v[:, keys]  # [B, N, K, heads, Dv]

    logits = torch.einsum('bnhd,bnkhd->bnhk', q, k_nb) * scale
    if rpb is not None:
        bias = rpb.to(compute)[(slice(None),) + bias_index]  # [heads, N, K]
        logits = logits + bias.permute(1, 0, 2).unsqueeze(0)
    logits = logits.masked_fill(~valid[None, :, None, :], float('-inf'))
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - lse.unsqueeze(-1))
    out = torch.einsum('bnhk,bnkhd->bnhd', probs, v_nb)
    out = out.reshape(batch, *spatial, heads, -1).to(query.dtype)
    return out, lse.reshape(batch, *spatial, heads).float()


def _prod(values) -> int:
    result = 1
    for v in values:
        result *= v
    return result
