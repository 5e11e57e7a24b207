"""Memory-lean routed attention in PyTorch: the default wherever the Triton backend does not run (CPU, fp64).

The ``B * H * nR`` query regions are flattened and processed in chunks. For a chunk, the key and value rows of the
routed regions are gathered (``index_select`` of whole regions), weighted by ``r_weight`` when given, and attended
in one batched call; only the output and the log-sum-exp are kept. A chunk holds at most ``_CHUNK_BYTES`` of
gathered rows and logits, so the ``[B, H, nR, topk * Mk, D]`` gather of the official code never exists for all
regions at once (a ``[rows, topk * Mk]`` logit block exists per chunk).

The backward is written by hand (:class:`_RoutedAttention`): per chunk it gathers again, recomputes the
probabilities from the saved log-sum-exp, and adds the gradients of the gathered rows back into dK/dV with
``index_add_`` in a fixed order (deterministic on CPU). The attention of a chunk uses PyTorch's fused CPU flash
kernel when it applies (CPU, ``D == Dv``, no gradient of the log-sum-exp) and batched matmuls otherwise.

Under ``torch.func`` transforms (``vmap(grad(...))`` per-sample gradients) the vmapped dim is merged into the batch
dim, in the forward and in the backward (each an ``autograd.Function`` with a ``vmap`` rule). The backward is not
differentiable again (the fused CPU attention backward it uses has no derivative).
"""
from __future__ import annotations

import torch

__all__ = ['bra_torch']

# bytes of gathered K/V rows (plus logits on the matmul path) per chunk of query regions
_CHUNK_BYTES = 32 * 2 ** 20


def bra_torch(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        r_idx: torch.Tensor,
        r_weight: torch.Tensor | None,
        scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routed attention by chunked gather; arguments already validated by ``functional.py``.

    Args:
        query: ``[B, H, nR, M, D]``.
        key: ``[B, H, nRk, Mk, D]``.
        value: ``[B, H, nRk, Mk, Dv]``.
        r_idx: ``[B, nR, topk]`` or ``[B, H, nR, topk]`` integer.
        r_weight: soft-routing weights of the shape of ``r_idx``, or None.
        scale: logit scale.

    Returns:
        ``(out, lse)``: out ``[B, H, nR, M, Dv]`` in the query's dtype, lse ``[B, H, nR, M]`` fp32; differentiable
        with respect to query, key, value and r_weight.
    """
    out, lse = _RoutedAttention.apply(query, key, value, r_idx, r_weight, float(scale))
    return out, lse.float()


def _flat_index(r_idx: torch.Tensor, batch: int, heads: int, n_k: int) -> torch.Tensor:
    # [B * H * nR, topk] int64 row of the routed region in key viewed as [B * H * nRk, Mk, D]
    if r_idx.dim() == 3:
        r_idx = r_idx.unsqueeze(1)
    base = torch.arange(batch * heads, device=r_idx.device).view(batch, heads, 1, 1) * n_k
    return (r_idx.long() + base).reshape(-1, r_idx.shape[-1])


def _flat_weight(r_weight: torch.Tensor | None, batch: int, heads: int, dtype: torch.dtype) -> torch.Tensor | None:
    if r_weight is None:
        return None
    if r_weight.dim() == 3:
        r_weight = r_weight.unsqueeze(1)
    return r_weight.to(dtype).expand(batch, heads, -1, -1).reshape(-1, r_weight.shape[-1])


def _chunk_rows(rows: int, topk: int, m: int, mk: int, d: int, dv: int, elt: int) -> int:
    per_row = topk * mk * ((d + dv) * elt + 4 * m)
    return max(1, min(rows, _CHUNK_BYTES // per_row))


def _use_flash(t: torch.Tensor, d: int, dv: int) -> bool:
    return t.device.type == 'cpu' and d == dv


def _gather(x_flat: torch.Tensor, idx: torch.Tensor, w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    # rows of the routed regions of a chunk, [c, topk, Mk, C] unweighted and [c, topk * Mk, C] weighted
    c, topk = idx.shape
    sel = x_flat.index_select(0, idx.reshape(-1)).view(c, topk, *x_flat.shape[1:])
    weighted = sel * w[:, :, None, None].to(sel.dtype) if w is not None else sel
    return sel, weighted.flatten(1, 2)


def _routed_forward(query, key, value, r_idx, r_weight, scale):
    """``(out [B, H, nR, M, Dv]`` in the query's dtype, ``lse [B, H, nR, M]`` in the compute dtype)."""
    batch, heads, n_q, m, d = query.shape
    n_k, mk, dv = key.shape[2], key.shape[3], value.shape[-1]
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    flash = _use_flash(query, d, dv)
    idx = _flat_index(r_idx, batch, heads, n_k)
    w = _flat_weight(r_weight, batch, heads, compute)
    q = query.reshape(-1, m, d)
    k = key.reshape(-1, mk, d)
    v = value.reshape(-1, mk, dv)
    rows, topk = idx.shape
    out = query.new_empty(rows, m, dv)
    lse = query.new_empty(rows, m, dtype=compute)
    step = _chunk_rows(rows, topk, m, mk, d, dv, query.element_size())
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        w_c = w[r0:r1] if w is not None else None
        _, k_c = _gather(k, idx[r0:r1], w_c)
        _, v_c = _gather(v, idx[r0:r1], w_c)
        if flash:
            o_c, lse_c = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q[r0:r1].unsqueeze(1), k_c.unsqueeze(1), v_c.unsqueeze(1), scale=scale)
            out[r0:r1] = o_c.squeeze(1)
            lse[r0:r1] = lse_c.squeeze(1)
        else:
            logits = (q[r0:r1].to(compute) @ k_c.to(compute).transpose(1, 2)) * scale
            lse_c = torch.logsumexp(logits, dim=-1)
            out[r0:r1] = torch.exp(logits - lse_c.unsqueeze(-1)) @ v_c.to(compute)
            lse[r0:r1] = lse_c
    return out.view(batch, heads, n_q, m, dv), lse.view(batch, heads, n_q, m)


def _routed_backward(grad_out, grad_lse, query, key, value, r_idx, r_weight, out, lse, scale, need_w):
    """``(dq, dk, dv, d r_weight or None)`` of :func:`_routed_forward`'s ``(out, lse)`` for their gradients (either
    may be None: zero)."""
    batch, heads, n_q, m, d = query.shape
    n_k, mk, dv = key.shape[2], key.shape[3], value.shape[-1]
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    need_w = r_weight is not None and need_w
    flash = _use_flash(query, d, dv) and grad_lse is None
    idx = _flat_index(r_idx, batch, heads, n_k)
    w = _flat_weight(r_weight, batch, heads, compute)
    q = query.reshape(-1, m, d)
    k = key.reshape(-1, mk, d)
    v = value.reshape(-1, mk, dv)
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    do = grad_out.reshape(-1, m, dv)
    out = out.reshape(-1, m, dv)
    lse = lse.reshape(-1, m)
    rows, topk = idx.shape
    dq = torch.empty(rows, m, d, dtype=compute, device=query.device)
    dk = torch.zeros(k.shape, dtype=compute, device=query.device)
    dv_ = torch.zeros(v.shape, dtype=compute, device=query.device)
    dw = torch.empty(rows, topk, dtype=compute, device=query.device) if need_w else None
    step = _chunk_rows(rows, topk, m, mk, d, dv, 4 * query.element_size())
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        c = r1 - r0
        w_c = w[r0:r1] if w is not None else None
        k_raw, k_c = _gather(k, idx[r0:r1], w_c)
        v_raw, v_c = _gather(v, idx[r0:r1], w_c)
        if flash:
            dq_c, dk_c, dv_c = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                do[r0:r1].unsqueeze(1), q[r0:r1].unsqueeze(1), k_c.unsqueeze(1), v_c.unsqueeze(1),
                out[r0:r1].unsqueeze(1), lse[r0:r1].unsqueeze(1), 0.0, False, scale=scale)
            dq_c, dk_c, dv_c = dq_c.squeeze(1).to(compute), dk_c.squeeze(1).to(compute), dv_c.squeeze(1).to(compute)
        else:
            q_c, do_c = q[r0:r1].to(compute), do[r0:r1].to(compute)
            k_c, v_c = k_c.to(compute), v_c.to(compute)
            p = torch.exp((q_c @ k_c.transpose(1, 2)) * scale - lse[r0:r1].unsqueeze(-1))
            delta = (do_c * out[r0:r1].to(compute)).sum(-1)
            if grad_lse is not None:
                delta = delta - grad_lse.reshape(rows, m)[r0:r1].to(compute)
            dv_c = p.transpose(1, 2) @ do_c
            ds = p * (do_c @ v_c.transpose(1, 2) - delta.unsqueeze(-1))
            dq_c = (ds @ k_c) * scale
            dk_c = (ds.transpose(1, 2) @ q_c) * scale
        dq[r0:r1] = dq_c
        dk_c = dk_c.view(c, topk, mk, d)
        dv_c = dv_c.view(c, topk, mk, dv)
        if need_w:
            dw[r0:r1] = (dk_c * k_raw.to(compute)).sum((2, 3)) + (dv_c * v_raw.to(compute)).sum((2, 3))
        if w_c is not None:
            dk_c = dk_c * w_c[:, :, None, None]
            dv_c = dv_c * w_c[:, :, None, None]
        flat = idx[r0:r1].reshape(-1)
        dk.index_add_(0, flat, dk_c.reshape(-1, mk, d))
        dv_.index_add_(0, flat, dv_c.reshape(-1, mk, dv))
    grad_w = None
    if need_w:
        grad_w = dw.view(batch, heads, n_q, topk)
        if r_weight.dim() == 3:
            grad_w = grad_w.sum(1)
        grad_w = grad_w.to(r_weight.dtype)
    return (dq.view(query.shape).to(query.dtype), dk.view(key.shape).to(key.dtype),
            dv_.view(value.shape).to(value.dtype), grad_w)


def _fold_vmap_dim(x, in_dim, size: int):
    """A tensor under ``torch.func.vmap`` with its vmapped dim ``in_dim`` (None: not vmapped, broadcast) merged into
    its batch dim: ``[size * B, ...]``. Other arguments unchanged."""
    if not isinstance(x, torch.Tensor):
        return x
    x = x.movedim(in_dim, 0) if in_dim is not None else x.expand(size, *x.shape)
    return x.reshape(size * x.shape[1], *x.shape[2:])


def _unfold_vmap_dim(x, size: int):
    return x.reshape(size, -1, *x.shape[1:]) if isinstance(x, torch.Tensor) else x


class _RoutedAttention(torch.autograd.Function):
    """``(out, lse)`` of :func:`_routed_forward` with the hand-written backward. Under ``torch.func.vmap`` the
    vmapped dim is merged into the batch dim (batch elements are independent), here and in the backward
    (:class:`_RoutedAttentionBackward`), so per-sample gradients run the same kernels."""

    @staticmethod
    def forward(query, key, value, r_idx, r_weight, scale):
        return _routed_forward(query, key, value, r_idx, r_weight, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        query, key, value, r_idx, r_weight, scale = inputs
        out, lse = output
        ctx.save_for_backward(query, key, value, r_idx, r_weight, out, lse)
        ctx.scale = scale
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        query, key, value, r_idx, r_weight, out, lse = ctx.saved_tensors
        dq, dk, dv, dw = _RoutedAttentionBackward.apply(
            grad_out, grad_lse, query, key, value, r_idx, r_weight, out, lse, ctx.scale, ctx.needs_input_grad[4])
        return dq, dk, dv, None, dw, None

    @staticmethod
    def vmap(info, in_dims, query, key, value, r_idx, r_weight, scale):
        args = [_fold_vmap_dim(x, d, info.batch_size)
                for x, d in zip((query, key, value, r_idx, r_weight), in_dims)]
        out, lse = _RoutedAttention.apply(*args, scale)
        return (_unfold_vmap_dim(out, info.batch_size), _unfold_vmap_dim(lse, info.batch_size)), (0, 0)


class _RoutedAttentionBackward(torch.autograd.Function):
    """:func:`_routed_backward` as an op of its own, for its ``vmap`` rule (its chunked in-place writes cannot be
    vmapped op by op). Not differentiable: the fused CPU attention backward it uses has no derivative either."""

    @staticmethod
    def forward(grad_out, grad_lse, query, key, value, r_idx, r_weight, out, lse, scale, need_w):
        return _routed_backward(grad_out, grad_lse, query, key, value, r_idx, r_weight, out, lse, scale, need_w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError('routed_attention (torch backend) is differentiable once: its backward has no derivative')

    @staticmethod
    def vmap(info, in_dims, grad_out, grad_lse, query, key, value, r_idx, r_weight, out, lse, scale, need_w):
        args = [_fold_vmap_dim(x, d, info.batch_size)
                for x, d in zip((grad_out, grad_lse, query, key, value, r_idx, r_weight, out, lse), in_dims)]
        grads = _RoutedAttentionBackward.apply(*args, scale, need_w)
        dw_dim = 0 if grads[3] is not None else None
        return tuple(_unfold_vmap_dim(g, info.batch_size) for g in grads), (0, 0, 0, dw_dim)
