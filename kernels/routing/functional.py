"""Public entry of bi-level routing attention (BiFormer's BRA): validate, normalise, dispatch.

Layout, region-major (what BiFormer's region partition gives after its permute):

* query ``[B, H, nR, M, D]``: ``nR`` query regions of ``M`` tokens each;
* key ``[B, H, nRk, Mk, D]`` and value ``[B, H, nRk, Mk, Dv]``: ``nRk`` key regions of ``Mk`` tokens;
* r_idx ``[B, nR, topk]`` (shared by all heads, as BiFormer) or ``[B, H, nR, topk]``: the key regions each query
  region attends;
* output ``[B, H, nR, M, Dv]`` in the query's dtype; log-sum-exp ``[B, H, nR, M]`` in fp32.

The semantics (the official gather, soft routing, duplicate indices) are written out in ``README.md`` beside this
file; ``reference.py`` is the executable specification.
"""
from __future__ import annotations

import os

import torch

from .._utils.backend import resolve_backend, triton_kernel_unsupported_reason
from .._utils.checks import check_same, check_scale, check_tensor, in_functorch_transform
from .._utils.shape_only import is_shape_only, shape_only_attention

__all__ = ['routed_attention', 'SCRIPT_OP']

INDEX_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
# opt-in to the atomic (non-deterministic) dK/dV backward of the Triton backend; ignored while
# torch.are_deterministic_algorithms_enabled()
ATOMIC_ENV = 'ZOO_BRA_ATOMIC_BWD'


def routed_attention(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        r_idx: torch.Tensor,
        *,
        scale: float | None = None,
        r_weight: torch.Tensor | None = None,
        backend: str | None = None,
        return_lse: bool = False,
        check_indices: bool = True,
):
    """Attention of every query region over the tokens of its ``topk`` routed key regions.

    Query region ``r`` (of batch ``b``, head ``h``) attends the ``topk * Mk`` key tokens of key regions
    ``r_idx[b, (h,) r, 0..topk-1]`` in one softmax, exactly as BiFormer's gather of K/V rows followed by dense
    attention. With ``r_weight`` ("soft" routing), the key and value rows of routed region ``t`` are multiplied by
    ``r_weight[b, (h,) r, t]`` before the attention. An index repeated within a row counts as many times as it
    appears (the gather's semantics; BiFormer's ``topk`` never repeats one).

    Args:
        query: ``[B, H, nR, M, D]``, float16, bfloat16, float32 or float64; any strides.
        key: ``[B, H, nRk, Mk, D]``, same dtype and device.
        value: ``[B, H, nRk, Mk, Dv]``, same dtype and device.
        r_idx: integer ``[B, nR, topk]`` (shared by the heads) or ``[B, H, nR, topk]``, values in ``[0, nRk)``,
            ``1 <= topk <= nRk``. Not differentiable.
        scale: logit scale, positive and finite, default ``D ** -0.5`` (BiFormer passes ``C ** -0.5`` with the full
            channel count). This and every later argument are keyword-only.
        r_weight: optional floating tensor of the shape of ``r_idx``: soft-routing weights, differentiable.
        backend: 'reference', 'torch', 'triton' or None (automatic: Triton on CUDA for fp16/bf16/fp32 and head
            dims <= 128, torch otherwise; the environment variable ``ZOO_BRA_BACKEND`` overrides the automatic
            choice). Meta and fake tensors (outside ``torch.compile`` / ``torch.export``) take no backend: their
            outputs are allocated, not computed, and are differentiable.
        return_lse: also return the fp32 log-sum-exp of the scaled logits.
        check_indices: check that every ``r_idx`` value lies in ``[0, nRk)``. The check reads the values on the host:
            on CUDA one device synchronisation per call. Pass False only for indices in range by construction (a
            ``topk`` over ``nRk`` region scores, as BiFormer's router computes them): an out-of-range index is then
            read out of bounds. Inside ``torch.func`` transforms the values cannot be read on the host and
            are not checked (the torch backend's ``index_select`` still refuses an out-of-range index).

    The Triton backward is deterministic (bitwise reproducible dK/dV). Setting the environment variable
    ``ZOO_BRA_ATOMIC_BWD=1`` opts in to a faster variant that adds dK/dV with fp32 atomics; it is ignored while
    ``torch.are_deterministic_algorithms_enabled()``.

    Returns:
        ``out`` ``[B, H, nR, M, Dv]`` in the query's dtype, or ``(out, lse)`` with lse ``[B, H, nR, M]`` fp32.

    Raises:
        TypeError: a tensor of the wrong type or dtype, or an argument of the wrong type.
        ValueError: shapes, devices or index values that break the rules above; the message names the argument
            and the value expected. The index range is checked in eager mode only (it needs a device sync); it is
            skipped while ``torch.compile`` traces and for meta or fake indices.
    """
    for name, flag in (('return_lse', return_lse), ('check_indices', check_indices)):
        if not isinstance(flag, bool):
            raise TypeError(f'{name} must be a bool, got {type(flag).__name__}')
    check_bra_inputs(query, key, value, r_idx, r_weight, check_indices)
    check_scale(scale)
    scale = float(scale) if scale is not None else query.shape[-1] ** -0.5

    if is_shape_only(query):
        out, lse = shape_only_attention(
            (query, key, value, r_idx, r_weight), (*query.shape[:-1], value.shape[-1]), query.shape[:-1])
        return (out, lse) if return_lse else out
    chosen = resolve_backend('bra', backend, lambda: triton_kernel_unsupported_reason(query, value))
    if chosen == 'reference':
        from .reference import bra_reference
        out, lse = bra_reference(query, key, value, r_idx, r_weight, scale)
    elif chosen == 'torch':
        from .torch_impl import bra_torch
        out, lse = bra_torch(query, key, value, r_idx, r_weight, scale)
    else:
        from .triton_impl import bra_triton
        out, lse = bra_triton(query, key, value, r_idx, r_weight, scale, deterministic=_deterministic_bwd())
    return (out, lse) if return_lse else out


def check_bra_inputs(query, key, value, r_idx, r_weight, check_indices: bool = True) -> None:
    """Types, dtypes, devices and shapes of the tensors, and (``check_indices``, eager only) the range of the routing
    indices."""
    check_tensor('query', query, ndim=5)
    check_tensor('key', key, ndim=5)
    check_tensor('value', value, ndim=5)
    for name, other in (('key', key), ('value', value)):
        check_same(('query', name), query, other, 'dtype')
        check_same(('query', name), query, other, 'device')
    batch, heads, n_q, _, head_dim = query.shape
    if min(query.shape) < 1 or min(key.shape) < 1 or min(value.shape) < 1:
        raise ValueError(f'query, key and value must have no empty dimension, got shapes {tuple(query.shape)}, '
                         f'{tuple(key.shape)}, {tuple(value.shape)}')
    for name, other in (('key', key), ('value', value)):
        if tuple(other.shape[:2]) != (batch, heads):
            raise ValueError(f'{name} must have the batch and heads of query ({batch}, {heads}), '
                             f'got shape {tuple(other.shape)}')
    if key.shape[-1] != head_dim:
        raise ValueError(f'key must have the head_dim of query ({head_dim}), got shape {tuple(key.shape)}')
    if tuple(value.shape[2:4]) != tuple(key.shape[2:4]):
        raise ValueError(f'value must have the regions and region size of key {tuple(key.shape[2:4])} '
                         f'([B, H, nRk, Mk, Dv]), got shape {tuple(value.shape)}')
    n_k = key.shape[2]

    check_tensor('r_idx', r_idx, dtypes=INDEX_DTYPES)
    check_same(('query', 'r_idx'), query, r_idx, 'device')
    if r_idx.dim() not in (3, 4):
        raise ValueError(f'r_idx must have shape [B, nR, topk] or [B, H, nR, topk], got shape {tuple(r_idx.shape)}')
    lead = (batch, n_q) if r_idx.dim() == 3 else (batch, heads, n_q)
    if tuple(r_idx.shape[:-1]) != lead:
        names = '[B, nR]' if r_idx.dim() == 3 else '[B, H, nR]'
        raise ValueError(f'r_idx must have shape {names[:-1]}, topk] with {names} = {list(lead)} from query, '
                         f'got shape {tuple(r_idx.shape)}')
    topk = r_idx.shape[-1]
    if not 1 <= topk <= n_k:
        raise ValueError(f'r_idx must route to 1 <= topk <= nRk = {n_k} key regions, got topk = {topk}')
    if r_weight is not None:
        check_tensor('r_weight', r_weight)
        check_same(('query', 'r_weight'), query, r_weight, 'device')
        if tuple(r_weight.shape) != tuple(r_idx.shape):
            raise ValueError(f'r_weight must have the shape of r_idx {tuple(r_idx.shape)}, '
                             f'got {tuple(r_weight.shape)}')
    if check_indices and not torch.compiler.is_compiling() and not is_shape_only(r_idx) \
            and not in_functorch_transform(r_idx):  # values unreadable there (index_select still bounds-checks)
        low, high = torch.aminmax(r_idx)
        if bool((low < 0) | (high >= n_k)):  # the one read of the device
            raise ValueError(f'r_idx values must be in [0, nRk) = [0, {n_k}), '
                             f'got values in [{int(low)}, {int(high)}]')


def _deterministic_bwd() -> bool:
    if torch.are_deterministic_algorithms_enabled():
        return True
    return os.environ.get(ATOMIC_ENV, '0') in ('', '0')



# TorchScript entry: ``torch.ops.zoo.routed_attention`` (the name in ``SCRIPT_OP``) is this function as a dispatcher
# op for scripted modules, with a CompositeImplicitAutograd kernel (autograd, meta and fake tensors flow through the
# ops it runs). The kernel is Python: a scripted or saved model needs ``import zoo_kernels`` where it runs or loads.
SCRIPT_OP = 'zoo::routed_attention'
_LIB = torch.library.Library('zoo', 'FRAGMENT')
_LIB.define(
    'routed_attention(Tensor query, Tensor key, Tensor value, Tensor r_idx, float? scale, Tensor? r_weight) -> Tensor')


def _script_op(query, key, value, r_idx, scale, r_weight):
    return routed_attention(query, key, value, r_idx, scale=scale, r_weight=r_weight)


_LIB.impl('routed_attention', _script_op, 'CompositeImplicitAutograd')
