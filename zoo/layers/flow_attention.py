"""Flow attention (Flowformer): linear attention whose normalisation conserves incoming and outgoing flow.

From `Flowformer: Linearizing Transformers with Conservation Flows` (https://arxiv.org/abs/2202.06258); the official
image classifier is ``Flowformer_CV/flowformer.py`` of https://github.com/thuml/Flowformer (``Flow_Attention``).
Per head, with ``phi = sigmoid`` on q (``N`` sinks) and k (``M`` sources) and ``eps = 1e-6`` placed as officially:

* incoming flow of each sink ``I_i = 1 / ((phi(q_i) + eps) . (sum_j phi(k_j) + eps) + eps)``, outgoing flow of each
  source ``O_j = 1 / ((phi(k_j) + eps) . (sum_i phi(q_i) + eps) + eps)``;
* conserved flows ``I^_i = (phi(q_i) + eps) . (sum_j O_j phi(k_j) + eps) + eps`` and
  ``O^_j = clamp((phi(k_j) + eps) . (sum_i I_i phi(q_i) + eps) + eps, -1, 1)``;
* allocation ``sigmoid(I^_i N / M)`` of each sink, competition ``softmax_j(O^_j) M`` among the sources;
* ``out_i = (phi(q_i) (sum_j phi(k_j)^T competition_j v_j)) I_i allocation_i``, then ``proj``.

The sums over tokens are computed with matrix products (``q @ s`` instead of ``sum(q * s[:, None])``), the same
values up to rounding. For float16 inputs (autocast or not) everything between ``qkv`` and ``proj`` runs in float32:
the token sums reach ``N / 2`` per channel (32 768 at 1024 x 1024 px, stride 4), and the incoming flow ``1 / (N d)``
is below float16's normal range. Scripted, the core runs in float64 instead for float16 inputs: TorchScript ignores
``autocast(enabled=False)``, and autocast never downcasts float64. bfloat16 inputs are computed in bfloat16, as the
official code does under autocast: bfloat16 has float32's range, its matmuls and sums accumulate in float32, and the
flows are ratios of such sums (the ``eps = 1e-6`` added to sigmoids in (0, 1) vanishes in bfloat16, officially too).

Under ``torch.fx``, :class:`FlowAttention` is a leaf (timm's ``register_notrace_module``): its input check and
layout handling branch on shapes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from ._checks import check_bool, check_drop, check_input_dtype, check_nonempty, check_num_heads, shape_str
from ._precision import autocast_off, compute_dtype

__all__ = ['flow_attention_core', 'FlowAttention']


_EPS = 1e-6


class _RowDot(torch.autograd.Function):
    """``a @ row^T`` (``[B, h, L, d]``, ``[B, h, 1, d]`` -> ``[B, h, L, 1]``) whose backward gives ``a`` its gradient
    as a broadcast product: autograd's ``g @ row`` is an outer product through ``bmm``, several times slower on CPU."""

    generate_vmap_rule = True  # torch.func transforms (per-sample gradients) see through it

    @staticmethod
    def forward(a: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        return a @ row.transpose(-1, -2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        a, row = ctx.saved_tensors
        with autocast_off(g.device):
            grad_a = g * row if ctx.needs_input_grad[0] else None
            grad_row = g.transpose(-1, -2) @ a if ctx.needs_input_grad[1] else None
        return grad_a, grad_row


class _WeightedSum(torch.autograd.Function):
    """``w^T @ x`` (``[B, h, L, 1]``, ``[B, h, L, d]`` -> ``[B, h, 1, d]``) whose backward gives ``x`` its gradient as
    a broadcast product instead of autograd's outer-product ``bmm``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return w.transpose(-1, -2) @ x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        w, x = ctx.saved_tensors
        with autocast_off(g.device):
            grad_w = x @ g.transpose(-1, -2) if ctx.needs_input_grad[0] else None
            grad_x = w * g if ctx.needs_input_grad[1] else None
        return grad_w, grad_x


def _dot(a: torch.Tensor, b: torch.Tensor, fused: bool) -> torch.Tensor:
    """``[B, h, L, d]`` . ``[B, h, 1, d]`` per token -> ``[B, h, L, 1]``: a matrix product, or the official
    ``sum(a * b, -1)``."""
    if not fused:
        return (a * b).sum(dim=-1, keepdim=True)
    if not torch.jit.is_scripting() and (a.requires_grad or b.requires_grad):
        return _RowDot.apply(a, b)
    return a @ b.transpose(-1, -2)


def _weighted_sum(w: torch.Tensor, x: torch.Tensor, fused: bool) -> torch.Tensor:
    """``sum_n w_n x_n`` of ``[B, h, L, 1]`` weights and ``[B, h, L, d]`` rows -> ``[B, h, 1, d]``."""
    if not fused:
        return (x * w).sum(dim=2, keepdim=True)
    if not torch.jit.is_scripting() and (w.requires_grad or x.requires_grad):
        return _WeightedSum.apply(w, x)
    return w.transpose(-1, -2) @ x


def _flow(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fused: bool, eps: float = _EPS) -> torch.Tensor:
    """The flow-attention math on ``[B, heads, L, d]`` q, k, v in their (common) dtype."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    q, k = torch.sigmoid(q), torch.sigmoid(k)
    q_eps, k_eps = q + eps, k + eps
    # _dot(a, row) is the official my_sum "nhld,nhd->nhl", kept as [B, h, L, 1]
    sink_incoming = 1.0 / (_dot(q_eps, k.sum(dim=2, keepdim=True) + eps, fused) + eps)
    source_outgoing = 1.0 / (_dot(k_eps, q.sum(dim=2, keepdim=True) + eps, fused) + eps)
    conserved_sink = _dot(q_eps, _weighted_sum(source_outgoing, k, fused) + eps, fused) + eps
    conserved_source = _dot(k_eps, _weighted_sum(sink_incoming, q, fused) + eps, fused) + eps
    conserved_source = torch.clamp(conserved_source, min=-1.0, max=1.0)
    # the token counts stay ints (no float()): under torch.export they are symbolic sizes, not traced constants
    sink_allocation = torch.sigmoid(conserved_sink * (n_q / n_k))
    source_competition = torch.softmax(conserved_source, dim=-2) * n_k
    kv = k.transpose(-1, -2) @ (v * source_competition)
    return (q @ kv) * (sink_incoming * sink_allocation)


def flow_attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """Flow attention of ``[B, heads, N, d]`` q and ``[B, heads, M, d]`` k, v (before the sigmoid feature map).

    Args:
        q: queries (sinks).
        k: keys (sources).
        v: values.
        fused: token sums and per-token dot products as matrix products (default), or as the official elementwise
            products and sums (what fvcore counts: it does not count those).

    Returns:
        ``[B, heads, N, d]`` in the dtype of ``q``; float16 inputs are computed in float32 (with autocast switched
        off), bfloat16 ones in bfloat16. Scripted (TorchScript ignores ``autocast(enabled=False)``), float16 inputs
        are computed in float64, which autocast never downcasts.

    Raises:
        ValueError: shapes other than the above, or no tokens (``N`` or ``M`` 0) or batch.
    """
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f'q must be [B, heads, N, d] and k, v [B, heads, M, d], got q={shape_str(q)}, '
                         f'k={shape_str(k)}, v={shape_str(v)}')
    check_nonempty(q, 'q')
    check_nonempty(k, 'k')
    return _flow_in_compute_dtype(q, k, v, fused)


def _flow_in_compute_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fused: bool) -> torch.Tensor:
    """:func:`flow_attention_core` without its checks (its callers' inputs are checked already)."""
    out_dtype = q.dtype
    if torch.jit.is_scripting():
        dtype = torch.float64 if q.dtype == torch.float16 else q.dtype
        return _flow(_dense(q, dtype), _dense(k, dtype), _dense(v, dtype), fused).to(out_dtype)
    dtype = compute_dtype(q.dtype, keep_bfloat16=True)
    with autocast_off(q.device):
        out = _flow(_dense(q, dtype), _dense(k, dtype), _dense(v, dtype), fused)
    return out.to(out_dtype)


def _dense(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``, contiguous: one copy up front. q, k, v are usually head views of a token-major ``qkv``
    output, and the core's elementwise ops keep that layout, so each of its matmuls would copy its operand again to
    merge the batch and head dims."""
    return x.to(dtype).contiguous()


@register_notrace_module  # shape-dependent control flow (input checks, layouts): an FX leaf
class FlowAttention(nn.Module):
    """Multi-head flow attention over channels-last tokens (``[B, N, C]`` or ``[B, H, W, C]``)."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 12,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the input and output tokens.
            num_heads: heads; must divide ``dim`` (the official classifier uses 12 in every stage).
            qkv_bias: a bias in the ``qkv`` projection.
            proj_drop: dropout after ``proj``.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: ``num_heads`` does not divide ``dim``, or ``proj_drop`` outside [0, 1).
        """
        super().__init__()
        check_bool('qkv_bias', qkv_bias)
        dd = {'device': device, 'dtype': dtype}
        check_num_heads(dim, num_heads)
        check_drop('proj_drop', proj_drop)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        # token sums as matrix products; False: the official elementwise sums (what fvcore counts)
        self.fused_attn = True
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, dim]`` or ``[B, H, W, dim]`` tokens -> the same shape (all tokens attend to all).

        Raises:
            ValueError: another shape or an empty one.
            TypeError: ``x`` not floating point, or of another dtype than the parameters outside autocast.
        """
        if (x.dim() != 3 and x.dim() != 4) or x.shape[-1] != self.dim:
            raise ValueError(f'x must have shape [B, N, {self.dim}] or [B, H, W, {self.dim}], got {shape_str(x)}')
        check_nonempty(x)
        check_input_dtype(x, self.proj.weight)
        shape = x.shape
        B, C = shape[0], shape[-1]
        x = x.reshape(B, -1, C)
        N = x.shape[1]
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = _flow_in_compute_dtype(q, k, v, self.fused_attn)
        x = x.transpose(1, 2).reshape(shape)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}'
