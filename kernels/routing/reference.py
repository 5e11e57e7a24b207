"""Exact, readable bi-level routing attention: the specification every backend is tested against.

It does what BiFormer does: gather the key and value rows of the routed regions of every query region
(``[B, H, nR, topk * Mk, D]``, topk times the size of K and V), multiply them by the soft-routing weights when
given, and run dense attention over them in fp32 (fp64 for fp64 inputs). Memory grows with
``nR * topk * Mk``: tests and small inputs only. No production path imports this module.
"""
from __future__ import annotations

import torch

__all__ = ['bra_reference', 'gather_regions']


def gather_regions(x: torch.Tensor, r_idx: torch.Tensor) -> torch.Tensor:
    """Rows of the routed regions: ``x [B, H, nRk, Mk, C]``, ``r_idx [B, H, nR, topk]`` -> ``[B, H, nR, topk, Mk,
    C]``."""
    batch, heads = x.shape[:2]
    b = torch.arange(batch, device=x.device).view(batch, 1, 1, 1)
    h = torch.arange(heads, device=x.device).view(1, heads, 1, 1)
    return x[b, h, r_idx.long()]


def bra_reference(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        r_idx: torch.Tensor,
        r_weight: torch.Tensor | None,
        scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routed attention by explicit gather; arguments already validated by ``functional.py``.

    Args:
        query: ``[B, H, nR, M, D]``.
        key: ``[B, H, nRk, Mk, D]``.
        value: ``[B, H, nRk, Mk, Dv]``.
        r_idx: ``[B, nR, topk]`` or ``[B, H, nR, topk]`` integer.
        r_weight: soft-routing weights of the shape of ``r_idx``, or None.
        scale: logit scale.

    Returns:
        ``(out, lse)``: out ``[B, H, nR, M, Dv]`` in the query's dtype, lse ``[B, H, nR, M]`` fp32.
    """
    batch, heads, n_q, m, _ = query.shape
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    if r_idx.dim() == 3:
        r_idx = r_idx.unsqueeze(1)
        r_weight = r_weight.unsqueeze(1) if r_weight is not None else None
    r_idx = r_idx.expand(batch, heads, -1, -1)
    topk = r_idx.shape[-1]

    q = query.to(compute)
    k_sel = gather_regions(key.to(compute), r_idx)  # [B, H, nR, topk, Mk, D]
    v_sel = gather_regions(value.to(compute), r_idx)  # [B, H, nR, topk, Mk, Dv]
    if r_weight is not None:
        w = r_weight.to(compute).expand(batch, heads, -1, -1)[..., None, None]
        k_sel, v_sel = k_sel * w, v_sel * w
    k_sel = k_sel.reshape(batch, heads, n_q, topk * key.shape[3], -1)
    v_sel = v_sel.reshape(batch, heads, n_q, topk * key.shape[3], -1)

    logits = (q @ k_sel.transpose(-1, -2)) * scale  # [B, H, nR, M, topk * Mk]
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - lse.unsqueeze(-1))
    out = probs @ v_sel
    return out.to(query.dtype), lse.float()
