"""Fused neighborhood attention in Triton: launchers and the ``zoo::na_fwd`` / ``zoo::na_bwd`` custom ops.

The kernels live in ``triton_kernels.py``; this module maps every rank to 3-D (leading dummy axes of size 1,
kernel 1, dilation 1, stride 1), chooses tile shapes in one place (:func:`na_block_config`), allocates outputs
and launches. The ops are registered with ``torch.library`` (fake and autograd implementations included), so
``torch.compile`` traces through them without graph breaks and a new input resolution reuses the compiled kernels
(sizes and dilations are runtime arguments of the kernels).

Backward: the dQ kernel runs first and also writes ``delta = rowsum(dO * O) - dLSE``; the dK/dV kernel then walks,
for each key tile, the exact inverse box of the queries that see it, looping over the query heads of its key head.
Nothing is accumulated with atomics, so gradients are deterministic. When the legacy bias ``rpb`` needs a gradient,
the dQ kernel also writes dS of every (query, window offset) pair into an fp32 buffer ``[B, *spatial, heads,
prod(kernel_size)]`` (it exists only then), which is reduced in PyTorch: summed over the batch, then mapped to the
bias table with one one-hot matrix per axis (the bias index of an axis depends only on the query's coordinate on
that axis and the window offset).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton

from .._utils.triton_launch import dot_fp32 as _dot_fp32
from .._utils.triton_launch import dot_precision as _precision
from .._utils.triton_launch import on_device_of as _device_of
from .._utils.triton_launch import row_alignment as _alignment
from .._utils.triton_launch import target_arch as _arch
from .._utils.triton_launch import unit_last as _unit_last
from .indexing import group_length, window_start
from .triton_kernels import na_bwd_kernel_dkv, na_bwd_kernel_dq, na_fwd_kernel

__all__ = ['na_triton', 'na_fwd', 'na_bwd', 'na_block_config']

# stationary tile (queries of the forward and dQ kernels, keys of the dK/dV kernel) per rank and row count,
# leading dummy axes included
_TILES = {
    1: {64: (1, 1, 64), 32: (1, 1, 32), 16: (1, 1, 16)},
    2: {64: (1, 8, 8), 32: (1, 4, 8), 16: (1, 4, 4)},
    3: {64: (4, 4, 4), 32: (2, 4, 4), 16: (1, 4, 4)},
}
# (stationary rows, streamed rows, warps, stages) of the fwd, dq and dkv kernels by (bytes per element, padded head
# dim, architecture), chosen from compiling every kernel for sm80 and sm90 (python -m bench.build_matrix; figures
# in BENCHMARKS.md): the largest tiles that fit shared memory and keep 16-bit kernels free of register spills.
# Backward kernels hold more tiles at once (q, dO, dQ or k, v, dK, dV, P and dS) and take 8 warps. fp32 multiplies
# with three TF32 products on split operands: 16-row tiles, one stage. Other GPUs take the sm80 plans.
_WIDE, _BWD8 = (64, 64, 4, 2), (64, 64, 8, 2)
_PLANS = {
    **{(2, d, 90): dict(fwd=_WIDE, dq=_BWD8, dkv=_BWD8) for d in (16, 32, 64)},
    (2, 128, 90): dict(fwd=_BWD8, dq=(32, 64, 8, 2), dkv=(32, 64, 8, 2)),
    (2, 16, 80): dict(fwd=_WIDE, dq=_BWD8, dkv=_BWD8),
    (2, 32, 80): dict(fwd=_WIDE, dq=(64, 32, 8, 2), dkv=(64, 32, 8, 2)),
    **{(2, d, 80): dict(fwd=(64, 32, 8, 2), dq=(64, 32, 8, 2), dkv=(64, 32, 8, 2)) for d in (64, 128)},
    **{(4, d, arch): dict(fwd=(16, 32, 4, 1), dq=(16, 32, 4, 1), dkv=(16, 32, 4, 1))
       for d in (16, 32, 64, 128) for arch in (80, 90)},
}


def na_block_config(
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        head_dim: int,
        head_dim_v: int,
        dtype: torch.dtype = torch.float16,
        arch: int = 90,
) -> dict:
    """Tile shapes and launch options of every kernel, chosen in one place.

    Per kernel, the stationary tile (queries in the forward and dQ kernels, keys in the dK/dV kernel) has a fixed
    shape per rank and row count. The streamed sub-tile covers, per axis, the box that the stationary tile needs
    (``tile + kernel + stride - 2``, rounded up to a power of two), halved on its largest axis until it has at most
    the plan's streamed rows.

    Args:
        kernel_size: per-axis kernel sizes, 1 to 3 axes.
        stride: per-axis strides.
        head_dim: head dim of query and key.
        head_dim_v: head dim of value.
        dtype: dtype of the inputs.
        arch: compute capability the kernels run on (80, 90, ...; 0 in the interpreter).

    Returns:
        dict with ``cand`` (3-tuple, candidates of the inverse-window search), ``block_d``, ``block_dv`` and, for
        each of ``fwd``, ``dq`` and ``dkv``, a dict of ``tile``, ``sub`` (3-tuples), ``num_warps`` and
        ``num_stages``.
    """
    rank = len(kernel_size)
    kernel3 = _to_3d(kernel_size, 1)
    stride3 = _to_3d(stride, 1)
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_dv = max(16, triton.next_power_of_2(head_dim_v))
    element = torch.finfo(dtype).bits // 8
    cfg = dict(cand=tuple(triton.next_power_of_2(k + s - 1) for k, s in zip(kernel3, stride3)),
               block_d=block_d, block_dv=block_dv)
    plans = _PLANS[element, max(block_d, block_dv), 90 if arch == 90 else 80]
    for name in ('fwd', 'dq', 'dkv'):
        rows, sub_rows, warps, stages = plans[name]
        tile = _TILES[rank][rows]
        sub = [triton.next_power_of_2(t + k + s - 2) for t, k, s in zip(tile, kernel3, stride3)]
        while sub[0] * sub[1] * sub[2] > sub_rows:
            sub[sub.index(max(sub))] //= 2
        cfg[name] = dict(tile=tile, sub=tuple(sub), num_warps=warps, num_stages=stages)
    return cfg


def _launch_options(kernel_cfg: dict) -> dict:
    t, u = kernel_cfg['tile'], kernel_cfg['sub']
    return dict(T0=t[0], T1=t[1], T2=t[2], U0=u[0], U1=u[1], U2=u[2], num_warps=kernel_cfg['num_warps'],
                num_stages=kernel_cfg['num_stages'])


def na_fwd(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        rpb: torch.Tensor | None,
        kernel_size: tuple[int, ...],
        dilation: tuple[int, ...],
        stride: tuple[int, ...],
        is_causal: tuple[bool, ...],
        scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher: ``(out, lse)`` of :func:`na_triton` (no autograd); arguments as there."""
    query, key, value = _unit_last(query), _unit_last(key), _unit_last(value)
    batch, *spatial, heads, head_dim = query.shape
    heads_kv, head_dim_v = key.shape[-2], value.shape[-1]
    cfg = na_block_config(kernel_size, stride, head_dim, head_dim_v, query.dtype, _arch(query))
    out = query.new_empty(*query.shape[:-1], head_dim_v)
    lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    grid = (_num_tiles(spatial, dilation, cfg['fwd']['tile']) * batch * heads,)
    na_fwd_kernel[grid](
        query, key, value, rpb if rpb is not None else query, out, lse,
        *_strides(query), *_strides(key), *_strides(value), *_strides(out), *_strides(lse, heads_last=False),
        *_rpb_strides(rpb),
        *_to_3d(spatial, 1), *_to_3d(dilation, 1),
        heads, heads // heads_kv,
        scale,
        *_kernel_constants(kernel_size, stride, is_causal),
        DK=head_dim, DV=head_dim_v, BD=cfg['block_d'], BDV=cfg['block_dv'],
        HAS_RPB=rpb is not None, DOT_FP32=_dot_fp32(query), PRECISION=_precision(query),
        ALIGN=_alignment(query, key, value, out), **_launch_options(cfg['fwd']),
    )
    return out, lse


def na_bwd(
        grad_out: torch.Tensor,
        grad_lse: torch.Tensor | None,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        rpb: torch.Tensor | None,
        out: torch.Tensor,
        lse: torch.Tensor,
        kernel_size: tuple[int, ...],
        dilation: tuple[int, ...],
        stride: tuple[int, ...],
        is_causal: tuple[bool, ...],
        scale: float,
        rpb_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backward launcher: gradients of query, key, value and (when ``rpb_grad``) rpb.

    Args:
        grad_out: gradient of ``out``, ``[B, *spatial, heads, Dv]``.
        grad_lse: gradient of ``lse`` (fp32 ``[B, *spatial, heads]``) or None.
        out: the forward output, or any output whose softmax statistics ``lse`` describes (a merged attention).
        lse: the forward log-sum-exp.
        rpb_grad: compute the bias gradient (allocates the ``[B, *spatial, heads, prod(k)]`` fp32 dS buffer).
        query, key, value, rpb, kernel_size, dilation, stride, is_causal, scale: as in :func:`na_triton`.

    Returns:
        ``(dq, dk, dv, drpb)`` in the dtypes of their inputs; drpb is None unless ``rpb_grad``.
    """
    query, key, value, out, grad_out = map(_unit_last, (query, key, value, out, grad_out))
    lse = lse.contiguous()
    batch, *spatial, heads, head_dim = query.shape
    heads_kv, head_dim_v = key.shape[-2], value.shape[-1]
    cfg = na_block_config(kernel_size, stride, head_dim, head_dim_v, query.dtype, _arch(query))
    dq = torch.empty_like(query, memory_format=torch.contiguous_format)
    dk = torch.empty_like(key, memory_format=torch.contiguous_format)
    dv = torch.empty_like(value, memory_format=torch.contiguous_format)
    delta = torch.empty_like(lse)
    store_ds = rpb is not None and rpb_grad
    ds = query.new_empty(*query.shape[:-1], _prod(kernel_size), dtype=torch.float32) if store_ds else None
    if query.numel() == 0 or value.numel() == 0:
        drpb = torch.zeros_like(rpb) if store_ds else None
        return dq.zero_(), dk.zero_(), dv.zero_(), drpb
    if grad_lse is not None:
        grad_lse = grad_lse.float().contiguous()
    common = dict(
        DK=head_dim, DV=head_dim_v, BD=cfg['block_d'], BDV=cfg['block_dv'], HAS_RPB=rpb is not None,
        DOT_FP32=_dot_fp32(query), PRECISION=_precision(query),
        ALIGN=_alignment(query, key, value, out, grad_out, dq, dk, dv))
    constants = _kernel_constants(kernel_size, stride, is_causal)
    sizes = (*_to_3d(spatial, 1), *_to_3d(dilation, 1))
    rpb_arg = rpb if rpb is not None else query

    grid = (_num_tiles(spatial, dilation, cfg['dq']['tile']) * batch * heads,)
    na_bwd_kernel_dq[grid](
        query, key, value, rpb_arg, out, grad_out, lse, grad_lse if grad_lse is not None else lse, delta, dq,
        ds if store_ds else lse,
        *_strides(query), *_strides(key), *_strides(value), *_strides(out), *_strides(grad_out),
        *_strides(lse, heads_last=False), *_strides(dq),
        *(_strides(ds) if store_ds else (0,) * 5),
        *_rpb_strides(rpb),
        *sizes,
        heads, heads // heads_kv,
        scale,
        *constants,
        HAS_DLSE=grad_lse is not None, STORE_DS=store_ds,
        **common, **_launch_options(cfg['dq']),
    )
    grid = (_num_tiles(spatial, dilation, cfg['dkv']['tile']) * batch * heads_kv,)
    na_bwd_kernel_dkv[grid](
        query, key, value, rpb_arg, grad_out, lse, delta, dk, dv,
        *_strides(query), *_strides(key), *_strides(value), *_strides(grad_out),
        *_strides(lse, heads_last=False), *_strides(dk), *_strides(dv),
        *_rpb_strides(rpb),
        *sizes,
        heads_kv, heads // heads_kv,
        scale,
        *constants,
        CAND0=cfg['cand'][0], CAND1=cfg['cand'][1], CAND2=cfg['cand'][2],
        **common, **_launch_options(cfg['dkv']),
    )
    drpb = _rpb_grad(ds, kernel_size, dilation).to(rpb.dtype) if store_ds else None
    return dq, dk, dv, drpb


def _rpb_grad(ds: torch.Tensor, kernel_size: tuple[int, ...], dilation: tuple[int, ...]) -> torch.Tensor:
    # ds [B, *spatial, heads, prod(k)] in window-offset order -> [heads, 2k_0 - 1, ...], deterministically
    spatial = tuple(ds.shape[1:-2])
    rank, heads = len(spatial), ds.shape[-2]
    grad = ds.sum(0).view(*spatial, heads, *kernel_size)
    xs, ks, rs = 'xyz'[:rank], 'abc'[:rank], 'rst'[:rank]
    maps = [_rpb_onehot(spatial[i], kernel_size[i], dilation[i], ds.device) for i in range(rank)]
    equation = f'{xs}h{ks},' + ','.join(xs[i] + ks[i] + rs[i] for i in range(rank)) + f'->h{rs}'
    return torch.einsum(equation, grad, *maps)


def _rpb_onehot(length: int, kernel_size: int, dilation: int, device: torch.device) -> torch.Tensor:
    # [L, k, 2k - 1]: 1 where window offset a of query x reads bias index (start'(x') - x') + a + k - 1
    pos = torch.arange(length, device=device)
    local = pos // dilation
    start = window_start(local, group_length(length, dilation, pos % dilation), kernel_size)
    index = (start - local)[:, None] + torch.arange(kernel_size, device=device)[None, :] + kernel_size - 1
    return F.one_hot(index, 2 * kernel_size - 1).float()


def _to_3d(values, fill) -> tuple:
    return (fill,) * (3 - len(values)) + tuple(values)


def _strides(t: torch.Tensor, heads_last: bool = True) -> tuple[int, ...]:
    # (batch, axis 0, axis 1, axis 2, heads) strides of [B, *spatial, heads, D] (or of [B, *spatial, heads] when
    # heads_last is False); dummy axes get 0
    rank = t.dim() - (3 if heads_last else 2)
    return (t.stride(0), *_to_3d(t.stride()[1:1 + rank], 0), t.stride(1 + rank))


def _rpb_strides(rpb: torch.Tensor | None) -> tuple[int, ...]:
    if rpb is None:
        return (0,) * 4
    return (rpb.stride(0), *_to_3d(rpb.stride()[1:], 0))


def _kernel_constants(kernel_size, stride, is_causal) -> tuple:
    return *_to_3d(kernel_size, 1), *_to_3d(stride, 1), *_to_3d(tuple(bool(c) for c in is_causal), False)


def _num_tiles(spatial, dilation, tile) -> int:
    n = 1
    for size, d, t in zip(_to_3d(spatial, 1), _to_3d(dilation, 1), tile):
        n *= triton.cdiv(triton.cdiv(size, d), t) * d
    return n



def _prod(values) -> int:
    n = 1
    for v in values:
        n *= v
    return n


@torch.library.custom_op('zoo::na_fwd', mutates_args=())
def _na_fwd_op(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        rpb: torch.Tensor | None,
        kernel_size: list[int],
        dilation: list[int],
        stride: list[int],
        is_causal: list[bool],
        scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    with _device_of(query):
        return na_fwd(
            query, key, value, rpb, tuple(kernel_size), tuple(dilation), tuple(stride), tuple(is_causal), scale)


@_na_fwd_op.register_fake
def _(query, key, value, rpb, kernel_size, dilation, stride, is_causal, scale):
    out = query.new_empty(*query.shape[:-1], value.shape[-1])
    lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
    return out, lse


@torch.library.custom_op('zoo::na_bwd', mutates_args=())
def _na_bwd_op(
        grad_out: torch.Tensor,
        grad_lse: torch.Tensor | None,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        rpb: torch.Tensor | None,
        out: torch.Tensor,
        lse: torch.Tensor,
        kernel_size: list[int],
        dilation: list[int],
        stride: list[int],
        is_causal: list[bool],
        scale: float,
        rpb_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    with _device_of(query):
        dq, dk, dv, drpb = na_bwd(
            grad_out, grad_lse, query, key, value, rpb, out, lse, tuple(kernel_size), tuple(dilation), tuple(stride),
            tuple(is_causal), scale, rpb_grad)
    # an op cannot return None: an empty tensor stands for "no bias gradient"
    return dq, dk, dv, drpb if drpb is not None else query.new_empty(0)


@_na_bwd_op.register_fake
def _(grad_out, grad_lse, query, key, value, rpb, out, lse, kernel_size, dilation, stride, is_causal, scale,
      rpb_grad):
    drpb = rpb.new_empty(rpb.shape) if rpb is not None and rpb_grad else query.new_empty(0)
    return query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape), drpb


def _setup_context(ctx, inputs, output):
    query, key, value, rpb, kernel_size, dilation, stride, is_causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, rpb, out, lse)
    ctx.args = (kernel_size, dilation, stride, is_causal, scale)


def _backward(ctx, grad_out, grad_lse):
    query, key, value, rpb, out, lse = ctx.saved_tensors
    rpb_grad = rpb is not None and ctx.needs_input_grad[3]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, drpb = torch.ops.zoo.na_bwd(
        grad_out, grad_lse, query, key, value, rpb, out, lse, *ctx.args, rpb_grad)
    return dq, dk, dv, drpb if rpb_grad else None, None, None, None, None, None


_na_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def na_triton(
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
    """Fused neighborhood attention; arguments already validated and normalised by ``functional.py``.

    Args:
        query: ``[B, *spatial, heads, D]`` (1 to 3 spatial axes), float16, bfloat16 or float32, ``D <= 128``; any
            strides (a view of a packed qkv is read in place).
        key: ``[B, *spatial, heads_kv, D]``, ``heads % heads_kv == 0``.
        value: ``[B, *spatial, heads_kv, Dv]``, ``Dv <= 128``.
        kernel_size: per-axis kernel sizes.
        dilation: per-axis dilations.
        stride: per-axis strides.
        is_causal: per-axis causal flags.
        rpb: legacy bias ``[heads, 2k_0 - 1, ...]`` of any floating dtype, or None.
        scale: logit scale.

    Returns:
        ``(out, lse)``: out ``[B, *spatial, heads, Dv]`` in the input dtype, lse ``[B, *spatial, heads]`` fp32
        (natural log). Both are differentiable with respect to query, key, value and rpb.
    """
    return torch.ops.zoo.na_fwd(
        query, key, value, rpb, list(kernel_size), list(dilation), list(stride), [bool(c) for c in is_causal],
        float(scale))
