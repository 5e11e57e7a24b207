"""Fused bi-level routing attention in Triton: launchers and the ``zoo::bra_fwd`` / ``zoo::bra_bwd`` custom ops.

The kernels live in ``triton_kernels.py``; this module chooses tiles in one place (:func:`bra_block_config`),
allocates outputs, builds the inverse routing index of the backward and launches. Neither the gathered K/V rows
nor the logits are ever materialised: the forward keeps O and the fp32 log-sum-exp, the backward recomputes the
probabilities from them.

Backward, deterministic by default (kernels.md §4.4 option B):

1. ``bra_bwd_kernel_dq`` (Q-stationary, the forward's loop) writes dQ, ``delta = rowsum(dO * O) - dLSE`` and the
   soft-routing gradient of every (query region, t).
2. The inverse index: the keys ``(b, [h,] r_idx)`` of all (query region, t) pairs are sorted with a stable sort,
   which lists, for every key region, its incoming pairs in increasing ``r * topk + t`` order (CSR; offsets by
   ``searchsorted``). A repeated index in a row gives two pairs, so duplicates count twice as in the gather.
3. ``bra_bwd_kernel_dkv`` (KV-stationary) walks the list of its key region(s), recomputes P and dS, accumulates dK
   and dV in registers and writes them once: the same bits on every run.

With ``deterministic=False`` (option A), the dQ kernel also adds dK and dV with fp32 atomics into zeroed buffers and
the CSR pass and dK/dV kernel are skipped: one pass fewer, but the summation order (and the last bits) varies.
"""
from __future__ import annotations

import torch
import triton

from .._utils.triton_launch import dot_fp32 as _dot_fp32
from .._utils.triton_launch import dot_precision as _precision
from .._utils.triton_launch import on_device_of as _device_of
from .._utils.triton_launch import row_alignment as _alignment
from .._utils.triton_launch import unit_last as _unit_last
from .triton_kernels import bra_bwd_kernel_dkv, bra_bwd_kernel_dq, bra_fwd_kernel

__all__ = ['bra_triton', 'bra_fwd', 'bra_bwd', 'bra_block_config', 'routing_csr', 'work_order']

# rows of a tile: tl.dot needs 16; regions below that are packed into one program
_MIN_ROWS = 16
# most rows of the streamed side of a packed tile, and of any tile
_MAX_PACKED_COLS = 128
_MAX_ROWS = 64


def bra_block_config(m: int, mk: int, head_dim: int, head_dim_v: int, element_size: int = 2,
                     atomic: bool = False) -> dict:
    """Tile shapes of the kernels, chosen in one place.

    The stationary side (query tokens in the forward and dQ kernels, key tokens in the dK/dV kernel) takes
    ``BM``/``BN = min(next_pow2(size), 64)`` tokens of one region (32 when a row of the head dim exceeds 128 bytes,
    16 above 256 bytes, half that for fp32: 64-row tiles of fp32 x 128 need more shared memory than an H100 has and
    spill registers), or, for regions of fewer than 16 tokens, packs ``G = 16 // size`` regions (fewer when ``G``
    streamed regions would exceed 128 rows) into a 16-row tile. The streamed side comes in tiles of the same size,
    or ``G`` whole regions when packing.

    Args:
        m: tokens per query region.
        mk: tokens per key region.
        head_dim: head dim of query and key.
        head_dim_v: head dim of value.
        element_size: bytes per element of the inputs.
        atomic: for the backward whose dQ kernel also adds dK and dV with atomics (it holds their tiles too: at most
            32 rows from 128-byte rows, and twice the warps, up to 8; it spilled registers on sm80 otherwise).

    Returns:
        dict with ``fwd`` and ``dkv`` (each: ``pack``, ``g``, ``bm``, ``bn``, and the tile counts ``nmt``/``nkc``
        resp. ``nkt``/``nqc``), ``block_d``, ``block_dv``, ``num_warps`` and ``num_stages``.
    """
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_dv = max(16, triton.next_power_of_2(head_dim_v))
    row_bytes = max(block_d, block_dv) * element_size
    max_rows = _MAX_ROWS if row_bytes <= 128 else _MAX_ROWS // 2 if row_bytes <= 256 else _MAX_ROWS // 4
    if element_size == 4:
        # fp32 products are three TF32 ones, with split operands: half the rows keep them out of local memory
        max_rows = max(_MIN_ROWS, max_rows // 2)
    if atomic and row_bytes >= 128:
        max_rows = min(max_rows, _MAX_ROWS // 2)

    def side(stat: int, stream: int) -> tuple[bool, int, int, int]:
        # (pack, g, stationary rows, streamed rows)
        g = min(_MIN_ROWS // stat, _MAX_PACKED_COLS // stream) if stat < _MIN_ROWS else 1
        if g > 1:
            return True, g, _MIN_ROWS, max(_MIN_ROWS, triton.next_power_of_2(g * stream))
        return (False, 1, min(max(_MIN_ROWS, triton.next_power_of_2(stat)), max_rows),
                min(max(_MIN_ROWS, triton.next_power_of_2(stream)), max_rows))

    pack, g, bm, bn = side(m, mk)
    fwd = dict(pack=pack, g=g, bm=bm, bn=bn, nmt=1 if pack else triton.cdiv(m, bm), nkc=1 if pack else
               triton.cdiv(mk, bn))
    pack, g, bn, bm = side(mk, m)
    dkv = dict(pack=pack, g=g, bm=bm, bn=bn, nkt=1 if pack else triton.cdiv(mk, bn), nqc=1 if pack else
               triton.cdiv(m, bm))
    big = max(fwd['bm'] * fwd['bn'], dkv['bm'] * dkv['bn']) >= 64 * 64 or row_bytes > 128
    # 8 warps from 256-byte rows (16-bit head dim 128, fp32 from 64): 4 spilled registers there on sm90
    num_warps = 8 if row_bytes >= 256 else 4 if big or element_size == 4 else 2
    if atomic:
        num_warps = min(8, 2 * num_warps)
    return dict(fwd=fwd, dkv=dkv, block_d=block_d, block_dv=block_dv, num_warps=num_warps, num_stages=2)


def routing_csr(r_idx: torch.Tensor, n_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of the routing: for every key region, the (query region, t) pairs that route to it.

    Args:
        r_idx: ``[B, nR, topk]`` or ``[B, H, nR, topk]`` integer, values in ``[0, n_k)``.
        n_k: number of key regions.

    Returns:
        ``(offsets, pairs)``, int32: the pairs of key region ``kr`` of list ``l`` (``l = b`` or ``b * H + h``) are
        ``pairs[offsets[l * n_k + kr]:offsets[l * n_k + kr + 1]]``, each ``r * topk + t``, in increasing order.
        Built with a stable sort and ``searchsorted``: deterministic.
    """
    lists = r_idx.shape[0] * (r_idx.shape[1] if r_idx.dim() == 4 else 1)
    per_list = r_idx.shape[-2] * r_idx.shape[-1]
    flat = r_idx.reshape(lists, per_list).long()
    keys = (flat + torch.arange(lists, device=r_idx.device)[:, None] * n_k).reshape(-1)
    sorted_keys, order = torch.sort(keys, stable=True)
    pairs = (order % per_list).to(torch.int32)
    bounds = torch.arange(lists * n_k + 1, device=r_idx.device)
    offsets = torch.searchsorted(sorted_keys, bounds).to(torch.int32)
    return offsets, pairs


def work_order(offsets: torch.Tensor, n_k: int) -> torch.Tensor:
    """Order in which the dK/dV kernel takes the (list, key region) items of the inverse index.

    Lists stay contiguous (their programs read the same query rows, which then stay in L2); within a list, key
    regions come by decreasing in-degree, so long lists start early, the launch ends with short ones, and packed
    programs group regions of similar in-degree. Built with a stable sort: deterministic.

    Args:
        offsets: the CSR offsets of :func:`routing_csr`, ``[lists * n_k + 1]``.
        n_k: number of key regions.

    Returns:
        int32 ``[lists * n_k]``: item ``l * n_k + kr`` in processing order.
    """
    degree = (offsets[1:] - offsets[:-1]).long()
    items = torch.arange(degree.numel(), device=offsets.device)
    most = int(offsets.numel())
    keys = (items // n_k) * most + (most - 1 - degree)
    return torch.sort(keys, stable=True).indices.to(torch.int32)


def bra_fwd(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        r_idx: torch.Tensor,
        r_weight: torch.Tensor | None,
        scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher: ``(out, lse)`` of :func:`bra_triton` (no autograd); arguments as there."""
    query, key, value = _unit_last(query), _unit_last(key), _unit_last(value)
    batch, heads, n_q, m, head_dim = query.shape
    mk, head_dim_v = key.shape[3], value.shape[-1]
    cfg = bra_block_config(m, mk, head_dim, head_dim_v, query.element_size())
    f = cfg['fwd']
    ridx, rw = _routing(r_idx, r_weight)
    out = query.new_empty(batch, heads, n_q, m, head_dim_v)
    lse = query.new_empty(batch, heads, n_q, m, dtype=torch.float32)
    n_tiles = triton.cdiv(n_q, f['g']) if f['pack'] else n_q * f['nmt']
    bra_fwd_kernel[(n_tiles * batch * heads,)](
        query, key, value, ridx, rw if rw is not None else query, out, lse,
        *_strides(query), *_strides(key), *_strides(value), *_strides(out), *lse.stride()[:3],
        *_index_strides(ridx),
        heads, n_q, n_tiles, ridx.shape[-1],
        scale,
        M=m, MK=mk, G=f['g'], BM=f['bm'], BN=f['bn'], NMT=f['nmt'], NKC=f['nkc'],
        DK=head_dim, DV=head_dim_v, BD=cfg['block_d'], BDV=cfg['block_dv'],
        PACK=f['pack'], HAS_W=rw is not None, DOT_FP32=_dot_fp32(query), PRECISION=_precision(query),
        ALIGN=_alignment(query, key, value, out), num_warps=cfg['num_warps'], num_stages=cfg['num_stages'],
    )
    return out, lse


def bra_bwd(
        grad_out: torch.Tensor,
        grad_lse: torch.Tensor | None,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        r_idx: torch.Tensor,
        r_weight: torch.Tensor | None,
        out: torch.Tensor,
        lse: torch.Tensor,
        scale: float,
        weight_grad: bool,
        deterministic: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backward launcher: gradients of query, key, value and (when ``weight_grad``) r_weight.

    Args:
        grad_out: gradient of ``out``, ``[B, H, nR, M, Dv]``.
        grad_lse: gradient of ``lse`` (fp32 ``[B, H, nR, M]``) or None.
        out: the forward output, or any output whose softmax statistics ``lse`` describes (a merged attention).
        lse: the forward log-sum-exp.
        weight_grad: compute the gradient of ``r_weight`` (needs ``r_weight``).
        deterministic: dK/dV by the KV-stationary kernel over the inverse index (bitwise reproducible); False adds
            them with fp32 atomics in the dQ kernel instead.
        query, key, value, r_idx, r_weight, scale: as in :func:`bra_triton`.

    Returns:
        ``(dq, dk, dv, dw)`` in the dtypes of their inputs; dw (the shape of ``r_weight``) is None unless
        ``weight_grad``.
    """
    query, key, value, out, grad_out = map(_unit_last, (query, key, value, out, grad_out))
    lse = lse.contiguous()
    batch, heads, n_q, m, head_dim = query.shape
    n_k, mk, head_dim_v = key.shape[2], key.shape[3], value.shape[-1]
    cfg = bra_block_config(m, mk, head_dim, head_dim_v, query.element_size(), atomic=not deterministic)
    f, b = cfg['fwd'], cfg['dkv']
    ridx, rw = _routing(r_idx, r_weight)
    topk = ridx.shape[-1]
    weight_grad = weight_grad and rw is not None
    if grad_lse is not None:
        grad_lse = grad_lse.float().contiguous()
    dq = torch.empty_like(query, memory_format=torch.contiguous_format)
    delta = torch.empty_like(lse)
    if deterministic:
        dk = torch.empty_like(key, memory_format=torch.contiguous_format)
        dv = torch.empty_like(value, memory_format=torch.contiguous_format)
        dk32 = dv32 = lse
    else:
        dk32 = torch.zeros(key.shape, dtype=torch.float32, device=key.device)
        dv32 = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
    # the soft-routing gradient of every (query region, query tile, t), summed over tiles below
    dw = query.new_empty(batch, heads, n_q, f['nmt'], topk, dtype=torch.float32) if weight_grad else None
    common = dict(
        DK=head_dim, DV=head_dim_v, BD=cfg['block_d'], BDV=cfg['block_dv'], HAS_W=rw is not None,
        DOT_FP32=_dot_fp32(query), PRECISION=_precision(query), num_warps=cfg['num_warps'],
        num_stages=cfg['num_stages'],
        ALIGN=_alignment(query, key, value, out, grad_out, dq, *((dk, dv) if deterministic else (dk32, dv32))))

    n_tiles = triton.cdiv(n_q, f['g']) if f['pack'] else n_q * f['nmt']
    bra_bwd_kernel_dq[(n_tiles * batch * heads,)](
        query, key, value, ridx, rw if rw is not None else query, out, grad_out, lse,
        grad_lse if grad_lse is not None else lse, delta, dq, dw if dw is not None else lse, dk32, dv32,
        *_strides(query), *_strides(key), *_strides(value), *_strides(out), *_strides(grad_out), *_strides(dq),
        *(_strides(dk32) if not deterministic else (0,) * 4),
        *lse.stride()[:3], *_index_strides(ridx), *(dw.stride()[:4] if dw is not None else (0,) * 4),
        heads, n_q, n_tiles, topk,
        scale,
        M=m, MK=mk, G=f['g'], GP=triton.next_power_of_2(f['g']), BM=f['bm'], BN=f['bn'], NMT=f['nmt'],
        NKC=f['nkc'], PACK=f['pack'], HAS_DLSE=grad_lse is not None, STORE_DW=weight_grad,
        ATOMIC=not deterministic, **common,
    )
    if deterministic:
        offsets, pairs = routing_csr(ridx, n_k)
        order = work_order(offsets, n_k)
        shared = ridx.dim() == 3
        n_items = order.numel()
        # the heads of shared routing share a list, and run on the second grid axis
        grid = (triton.cdiv(n_items, b['g']) if b['pack'] else n_items * b['nkt'], heads if shared else 1)
        bra_bwd_kernel_dkv[grid](
            query, key, value, rw if rw is not None else query, grad_out, lse, delta, offsets, pairs, order, dk, dv,
            *_strides(query), *_strides(key), *_strides(value), *_strides(grad_out), *_strides(dk), *_strides(dv),
            *lse.stride()[:3], *_index_strides(ridx),
            heads, n_items, n_k, topk,
            scale,
            M=m, MK=mk, G=b['g'], BM=b['bm'], BN=b['bn'], NKT=b['nkt'], NQC=b['nqc'], SHARED=shared,
            PACK=b['pack'], **common,
        )
    else:
        dk, dv = dk32.to(key.dtype), dv32.to(value.dtype)
    grad_w = None
    if weight_grad:
        grad_w = dw.sum(3)
        if r_weight.dim() == 3:
            grad_w = grad_w.sum(1)
        grad_w = grad_w.to(r_weight.dtype)
    return dq, dk, dv, grad_w


def _routing(r_idx: torch.Tensor, r_weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    # int32 indices and fp32 weights, contiguous (unit stride over topk)
    ridx = r_idx.to(torch.int32).contiguous()
    rw = r_weight.to(torch.float32).contiguous() if r_weight is not None else None
    return ridx, rw


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    # (batch, head, region, token) strides of [B, H, regions, tokens, dim]
    return tuple(t.stride()[:4])


def _index_strides(ridx: torch.Tensor) -> tuple[int, int, int]:
    # (batch, head, region) strides of r_idx / r_weight; 0 on heads when shared by the heads
    if ridx.dim() == 3:
        return ridx.stride(0), 0, ridx.stride(1)
    return ridx.stride(0), ridx.stride(1), ridx.stride(2)



@torch.library.custom_op('zoo::bra_fwd', mutates_args=())
def _bra_fwd_op(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        r_idx: torch.Tensor,
        r_weight: torch.Tensor | None,
        scale: float,
        deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    with _device_of(query):
        return bra_fwd(query, key, value, r_idx, r_weight, scale)


@_bra_fwd_op.register_fake
def _(query, key, value, r_idx, r_weight, scale, deterministic):
    out = query.new_empty(*query.shape[:-1], value.shape[-1])
    lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
    return out, lse


@torch.library.custom_op('zoo::bra_bwd', mutates_args=())
def _bra_bwd_op(
        grad_out: torch.Tensor,
        grad_lse: torch.Tensor | None,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        r_idx: torch.Tensor,
        r_weight: torch.Tensor | None,
        out: torch.Tensor,
        lse: torch.Tensor,
        scale: float,
        weight_grad: bool,
        deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    with _device_of(query):
        dq, dk, dv, dw = bra_bwd(
            grad_out, grad_lse, query, key, value, r_idx, r_weight, out, lse, scale, weight_grad, deterministic)
    # an op cannot return None: an empty tensor stands for "no weight gradient"
    return dq, dk, dv, dw if dw is not None else query.new_empty(0)


@_bra_bwd_op.register_fake
def _(grad_out, grad_lse, query, key, value, r_idx, r_weight, out, lse, scale, weight_grad, deterministic):
    dw = r_weight.new_empty(r_weight.shape) if r_weight is not None and weight_grad else query.new_empty(0)
    return query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape), dw


def _setup_context(ctx, inputs, output):
    query, key, value, r_idx, r_weight, scale, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, r_idx, r_weight, out, lse)
    ctx.args = (scale, deterministic)


def _backward(ctx, grad_out, grad_lse):
    query, key, value, r_idx, r_weight, out, lse = ctx.saved_tensors
    scale, deterministic = ctx.args
    weight_grad = r_weight is not None and ctx.needs_input_grad[4]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, dw = torch.ops.zoo.bra_bwd(
        grad_out, grad_lse, query, key, value, r_idx, r_weight, out, lse, scale, weight_grad, deterministic)
    return dq, dk, dv, None, dw if weight_grad else None, None, None


_bra_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def bra_triton(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        r_idx: torch.Tensor,
        r_weight: torch.Tensor | None,
        scale: float,
        deterministic: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused routed attention; arguments already validated by ``functional.py``.

    Args:
        query: ``[B, H, nR, M, D]``, float16, bfloat16 or float32, ``D <= 128``; any strides with a unit stride on
            ``D`` (other layouts are copied).
        key: ``[B, H, nRk, Mk, D]``.
        value: ``[B, H, nRk, Mk, Dv]``, ``Dv <= 128``.
        r_idx: ``[B, nR, topk]`` or ``[B, H, nR, topk]`` integer, values in ``[0, nRk)``.
        r_weight: soft-routing weights of the shape of ``r_idx`` (any floating dtype), or None.
        scale: logit scale.
        deterministic: bitwise reproducible dK/dV (default); False uses fp32 atomics (faster, last bits vary).

    Returns:
        ``(out, lse)``: out ``[B, H, nR, M, Dv]`` in the input dtype, lse ``[B, H, nR, M]`` fp32 (natural log).
        Both are differentiable with respect to query, key, value and r_weight.
    """
    return torch.ops.zoo.bra_fwd(query, key, value, r_idx, r_weight, float(scale), bool(deterministic))
