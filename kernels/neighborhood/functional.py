"""Public entry of neighborhood attention: validate, normalise, dispatch.

Layout (the one of NATTEN >= 0.20, "heads last", what a qkv Linear gives after a reshape):

* query ``[B, *spatial, heads, D]``, key ``[B, *spatial, heads_kv, D]``, value ``[B, *spatial, heads_kv, Dv]``
  with ``heads % heads_kv == 0`` (grouped-query attention when ``heads_kv < heads``);
* output ``[B, *spatial, heads, Dv]`` in the query's dtype; log-sum-exp ``[B, *spatial, heads]`` in fp32.

The semantics (window of a query, dilation groups, causal windows, stride, legacy relative-position bias) are
written out in ``README.md`` beside this file and in :mod:`zoo_kernels.neighborhood.indexing`.
"""
from __future__ import annotations

import torch

from .._utils.args import to_ntuple
from .._utils.backend import resolve_backend, triton_kernel_unsupported_reason
from .._utils.checks import check_same, check_scale, check_tensor
from .._utils.shape_only import is_shape_only, shape_only_attention

__all__ = ['neighborhood_attention', 'na1d', 'na2d', 'na3d', 'SCRIPT_OP']


def neighborhood_attention(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size,
        *,
        dilation=1,
        is_causal=False,
        rpb: torch.Tensor | None = None,
        scale: float | None = None,
        backend: str | None = None,
        stride=1,
        return_lse: bool = False,
):
    """Neighborhood attention over a 1-D, 2-D or 3-D token map (the rank is ``query.dim() - 3``).

    Each query attends the ``prod(kernel_size)`` keys of its window: per axis, ``kernel_size`` in-group keys
    around it, shifted (never truncated) at the borders. With dilation ``d`` the axis splits into ``d``
    interleaved groups (``x mod d``) that attend only themselves; groups may differ in length by one.

    Every argument after ``kernel_size`` is keyword-only: NATTEN's ``na2d(q, k, v, 7, 2)`` means stride 2, so a
    positional fifth argument raises ``TypeError`` here rather than silently meaning something else.

    Args:
        query: ``[B, *spatial, heads, D]``, floating point.
        key: ``[B, *spatial, heads_kv, D]``, same dtype and device; ``heads_kv`` divides ``heads``.
        value: ``[B, *spatial, heads_kv, Dv]``, same dtype and device.
        kernel_size: int or one int per axis, >= 2 and ``kernel_size * dilation <= size`` on every axis.
        dilation: int or one int per axis, >= 1.
        is_causal: bool or one bool per axis: a query sees only keys at or before it on that axis.
        rpb: legacy relative-position bias ``[heads, 2k_0 - 1, ..., 2k_{n-1} - 1]`` (NAT/DiNAT), added to the
            scaled logits at the in-group offset ``key - query + k - 1``. Odd kernels, no causal axis,
            stride 1. Any floating dtype; differentiable.
        scale: logit scale, positive and finite, default ``D ** -0.5``.
        backend: 'reference', 'torch', 'triton' or None (automatic: Triton on CUDA, torch otherwise; the
            environment variable ``ZOO_NA_BACKEND`` overrides the automatic choice). Meta and fake tensors
            (outside ``torch.compile`` / ``torch.export``) take no backend: their outputs are allocated, not
            computed, and are differentiable.
        stride: int or one int per axis, ``1 <= stride <= kernel_size``: groups of ``stride`` queries share
            the window of their centre (causal: last) query.
        return_lse: also return the fp32 log-sum-exp of the scaled, biased logits.

    Returns:
        ``out`` ``[B, *spatial, heads, Dv]``, or ``(out, lse)`` with lse ``[B, *spatial, heads]`` fp32.

    Raises:
        TypeError: a tensor of the wrong type or dtype, or an argument of the wrong type.
        ValueError: shapes, devices or argument values that break the rules above; the message names the
            argument and the value expected.
    """
    check_tensor('query', query)
    rank = query.dim() - 3
    if rank not in (1, 2, 3):
        raise ValueError(
            f'query must have shape [B, *spatial, heads, head_dim] with 1 to 3 spatial axes, '
            f'got shape {tuple(query.shape)}')
    kernel_size, dilation, stride, is_causal = normalize_na_args(rank, kernel_size, dilation, stride, is_causal)
    check_na_inputs(query, key, value, kernel_size, dilation, stride, is_causal, rpb)
    check_scale(scale)
    if not isinstance(return_lse, bool):
        raise TypeError(f'return_lse must be a bool, got {type(return_lse).__name__}')
    scale = float(scale) if scale is not None else query.shape[-1] ** -0.5

    if is_shape_only(query):
        out, lse = shape_only_attention(
            (query, key, value, rpb), (*query.shape[:-1], value.shape[-1]), query.shape[:-1])
        return (out, lse) if return_lse else out
    chosen = resolve_backend('na', backend, lambda: triton_kernel_unsupported_reason(query, value))
    if chosen == 'reference':
        from .reference import na_reference
        out, lse = na_reference(query, key, value, kernel_size, dilation, stride, is_causal, rpb, scale)
    elif chosen == 'torch':
        from .torch_impl import na_torch
        out, lse = na_torch(
            query, key, value, kernel_size, dilation, stride, is_causal, rpb, scale, return_lse=return_lse)
    else:
        from .triton_impl import na_triton
        out, lse = na_triton(query, key, value, kernel_size, dilation, stride, is_causal, rpb, scale)
    return (out, lse) if return_lse else out


def na1d(query, key, value, kernel_size, *, dilation=1, is_causal=False, rpb=None, scale=None, backend=None,
         stride=1, return_lse=False):
    """1-D neighborhood attention, ``[B, L, heads, D]``; see :func:`neighborhood_attention`."""
    _check_rank('na1d', query, 1)
    return neighborhood_attention(
        query, key, value, kernel_size, dilation=dilation, is_causal=is_causal, rpb=rpb, scale=scale,
        backend=backend, stride=stride, return_lse=return_lse)


def na2d(query, key, value, kernel_size, *, dilation=1, is_causal=False, rpb=None, scale=None, backend=None,
         stride=1, return_lse=False):
    """2-D neighborhood attention, ``[B, X, Y, heads, D]``; see :func:`neighborhood_attention`."""
    _check_rank('na2d', query, 2)
    return neighborhood_attention(
        query, key, value, kernel_size, dilation=dilation, is_causal=is_causal, rpb=rpb, scale=scale,
        backend=backend, stride=stride, return_lse=return_lse)


def na3d(query, key, value, kernel_size, *, dilation=1, is_causal=False, rpb=None, scale=None, backend=None,
         stride=1, return_lse=False):
    """3-D neighborhood attention, ``[B, X, Y, Z, heads, D]``; see :func:`neighborhood_attention`."""
    _check_rank('na3d', query, 3)
    return neighborhood_attention(
        query, key, value, kernel_size, dilation=dilation, is_causal=is_causal, rpb=rpb, scale=scale,
        backend=backend, stride=stride, return_lse=return_lse)


def normalize_na_args(rank: int, kernel_size, dilation, stride, is_causal):
    """Per-axis tuples of the window arguments, with the value rules that need no tensor."""
    kernel_size = to_ntuple(kernel_size, rank, 'kernel_size')
    dilation = to_ntuple(dilation, rank, 'dilation')
    stride = to_ntuple(stride, rank, 'stride')
    is_causal = to_ntuple(is_causal, rank, 'is_causal', kind=bool)
    if any(k < 2 for k in kernel_size):
        raise ValueError(f'kernel_size must be >= 2 on every axis, got {kernel_size}')
    if any(d < 1 for d in dilation):
        raise ValueError(f'dilation must be >= 1 on every axis, got {dilation}')
    if any(s < 1 or s > k for s, k in zip(stride, kernel_size)):
        raise ValueError(f'stride must satisfy 1 <= stride <= kernel_size on every axis, '
                         f'got stride={stride}, kernel_size={kernel_size}')
    return kernel_size, dilation, stride, is_causal


def check_na_inputs(query, key, value, kernel_size, dilation, stride, is_causal, rpb) -> None:
    """Shapes, dtypes and devices of the tensors, and the rules that tie them to the window arguments."""
    rank = len(kernel_size)
    check_tensor('key', key, ndim=query.dim())
    check_tensor('value', value, ndim=query.dim())
    for name, other in (('key', key), ('value', value)):
        check_same(('query', name), query, other, 'dtype')
        check_same(('query', name), query, other, 'device')
    batch_spatial = tuple(query.shape[:-2])
    for name, other in (('key', key), ('value', value)):
        if tuple(other.shape[:-2]) != batch_spatial:
            raise ValueError(f'{name} must have the batch and spatial sizes of query {batch_spatial}, '
                             f'got shape {tuple(other.shape)}')
    heads, head_dim = query.shape[-2:]
    heads_kv = key.shape[-2]
    if value.shape[-2] != heads_kv:
        raise ValueError(f'value must have the heads of key ({heads_kv}), got shape {tuple(value.shape)}')
    if heads_kv == 0 or heads % heads_kv != 0:
        raise ValueError(f'key heads must divide query heads ({heads}), got {heads_kv}')
    if key.shape[-1] != head_dim:
        raise ValueError(f'key must have the head_dim of query ({head_dim}), got {key.shape[-1]}')
    if min(query.shape[-1], value.shape[-1]) < 1 or query.shape[0] < 1:
        raise ValueError(f'query, key and value must be non-empty, got shapes {tuple(query.shape)}, '
                         f'{tuple(key.shape)}, {tuple(value.shape)}')
    spatial = query.shape[1:1 + rank]
    for axis, (size, k, d) in enumerate(zip(spatial, kernel_size, dilation)):
        if k * d > size:
            raise ValueError(
                f'kernel_size * dilation must not exceed the input size on every axis; axis {axis} has '
                f'size {size} but kernel_size={k} and dilation={d} need {k * d} (pad the input, or choose a '
                f'smaller kernel_size or dilation)')
    if rpb is not None:
        check_rpb(rpb, query, kernel_size, stride, is_causal)


def check_rpb(rpb, query, kernel_size, stride, is_causal) -> None:
    """The legacy bias needs odd kernels, no causal axis, stride 1 and shape ``[heads, 2k_0 - 1, ...]``."""
    check_tensor('rpb', rpb, ndim=len(kernel_size) + 1)
    check_same(('query', 'rpb'), query, rpb, 'device')
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(f'rpb needs an odd kernel_size on every axis, got kernel_size={kernel_size}')
    if any(is_causal):
        raise ValueError(f'rpb cannot be combined with causal attention, got is_causal={is_causal}')
    if any(s != 1 for s in stride):
        raise ValueError(f'rpb needs stride 1 on every axis, got stride={stride}')
    expected = (query.shape[-2],) + tuple(2 * k - 1 for k in kernel_size)
    if tuple(rpb.shape) != expected:
        raise ValueError(f'rpb must have shape [heads, 2*kernel_size-1, ...] = {list(expected)}, '
                         f'got {list(rpb.shape)}')


def _check_rank(fn: str, query, rank: int) -> None:
    check_tensor('query', query)
    if query.dim() != rank + 3:
        raise ValueError(f'{fn} expects query of shape [B, {_axes(rank)}, heads, head_dim] ({rank + 3} dims), '
                         f'got shape {tuple(query.shape)}')


def _axes(rank: int) -> str:
    return ', '.join('XYZ'[:rank]) if rank > 1 else 'L'



# TorchScript entry: ``torch.ops.zoo.neighborhood_attention`` (the name in ``SCRIPT_OP``) is this function as a
# dispatcher op, so scripted modules (timm's ``set_scriptable`` / ``torch.jit.script``) call the same validation and
# backend choice. Its kernel is CompositeImplicitAutograd: autograd, meta and fake tensors flow through the ops it
# runs. The kernel is Python: a scripted or saved model needs ``import zoo_kernels`` (``import zoo``) in the process
# that runs or loads it, like every op defined from Python.
SCRIPT_OP = 'zoo::neighborhood_attention'
_LIB = torch.library.Library('zoo', 'FRAGMENT')
_LIB.define(
    'neighborhood_attention(Tensor query, Tensor key, Tensor value, int[] kernel_size, int[] dilation, '
    'Tensor? rpb, float? scale) -> Tensor')


def _script_op(query, key, value, kernel_size, dilation, rpb, scale):
    return neighborhood_attention(
        query, key, value, list(kernel_size), dilation=list(dilation), rpb=rpb, scale=scale)


_LIB.impl('neighborhood_attention', _script_op, 'CompositeImplicitAutograd')
