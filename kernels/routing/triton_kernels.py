"""Triton kernels of fused bi-level routing attention (forward, dQ and dK/dV backward).

Tensors are region-major ``[B, H, regions, tokens, dim]`` with any strides (unit stride on ``dim``); a program owns
the rows of one (batch, head) and addresses a token as ``b * sB + h * sH + region * sR + token * sM``.

Two tilings of the stationary side, chosen per launch (``PACK``):

* ``PACK = False``: a program owns ``BM`` consecutive tokens of one region (regions of 16 tokens or more; the last
  tile of a region is masked). For every routed region (forward, dQ) or incoming (query region, t) pair (dK/dV),
  the other side is streamed in tiles of ``BN`` tokens.
* ``PACK = True``: ``tl.dot`` needs 16 rows, so regions of fewer tokens are packed ``G`` to a program, rows of
  slot ``g`` being ``g * M .. g * M + M - 1``. At step ``t`` every slot brings its own streamed region into its
  own column block of the tile, and a block-diagonal mask keeps each row to its slot's columns. The masked blocks
  cost tensor-core work and exponentials but no memory traffic, which is what bounds these shapes.

Logits are kept in log2 units (``log2(e) * scale`` folded in); rows accumulate in fp32. With soft routing the key
and value rows of routed region ``t`` are scaled by ``w = r_weight[..., r, t]``: logits ``w * scale * q.k``, values
``w * v``.
"""
import triton
import triton.language as tl

from .._utils.triton_common import LN2, LOG2E, NEG_INIT, dot

# runtime ints that are never specialised (Triton would compile one kernel per value of `x % 16 == 0` and
# `x == 1`): region counts, routing width, head count and every stride, so that one kernel serves every
# resolution, batch and layout; the alignment of the rows is passed as the constexpr ALIGN instead
_TENSORS = ('q', 'k', 'v', 'o', 'do', 'dq', 'dk', 'dv', 'a', 'l', 'i', 'w')
RUNTIME_ARGS = (['NH', 'NR', 'NRK', 'NQT', 'NITEMS', 'TOPK']
                + [f'stride_{t}{axis}' for t in _TENSORS for axis in 'bhrm'])


@triton.jit
def _stationary_rows(pid, N, S: tl.constexpr, G: tl.constexpr, B: tl.constexpr, NT: tl.constexpr,
                     PACK: tl.constexpr):
    # rows of the stationary tile of program `pid` over N regions of S tokens: (first region, token tile, slot of
    # each row, token of each row, row validity); NT tiles per region when not packing
    rows = tl.arange(0, B)
    if PACK:
        r0 = pid * G
        tile = pid * 0
        slot = rows // S
        tok = rows % S
        valid = (slot < G) & (r0 + slot < N)
    else:
        r0 = pid // NT
        tile = pid % NT
        slot = rows * 0
        tok = tile * B + rows
        valid = tok < S
    return r0, tile, slot, tok, valid


@triton.jit
def _offsets(base, region, tok, stride_r, stride_m, ALIGN: tl.constexpr):
    # int64 element offsets of rows; strides are not specialised, so the launcher states that they are multiples of
    # ALIGN (16-byte vector loads need it); the hint must sit on the op that computes the offsets
    offsets = base + region.to(tl.int64) * stride_r + tok.to(tl.int64) * stride_m
    if ALIGN > 1:
        offsets = tl.multiple_of(offsets, ALIGN)
    return offsets


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def bra_fwd_kernel(
    q, k, v, ridx, rw, o, lse,
    stride_qb, stride_qh, stride_qr, stride_qm,
    stride_kb, stride_kh, stride_kr, stride_km,
    stride_vb, stride_vh, stride_vr, stride_vm,
    stride_ob, stride_oh, stride_or, stride_om,
    stride_lb, stride_lh, stride_lr,
    stride_ib, stride_ih, stride_ir,
    NH, NR, NQT, TOPK,
    scale,
    M: tl.constexpr, MK: tl.constexpr, G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    NMT: tl.constexpr, NKC: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PACK: tl.constexpr, HAS_W: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, ALIGN: tl.constexpr,
):
    # Q-stationary: for t in 0..TOPK-1, the t-th routed region of every slot streams through an online softmax
    # one grid axis (B * H may exceed the 65535 of the second one); query tiles of one (batch, head) are adjacent,
    # so the routed regions they share stay in L2
    pid = tl.program_id(0)
    i_bh = pid // NQT
    i_b = i_bh // NH
    i_h = i_bh % NH
    r0, i_mt, q_slot, q_tok, q_valid = _stationary_rows(pid % NQT, NR, M, G, BM, NMT, PACK)
    qk_scale = scale * LOG2E

    o_d = tl.arange(0, BD)
    o_dv = tl.arange(0, BDV)
    row_q = _offsets(i_b.to(tl.int64) * stride_qb + i_h.to(tl.int64) * stride_qh, r0 + q_slot, q_tok,
                     stride_qr, stride_qm, ALIGN)
    # [BM, BD]
    b_q = tl.load(q + row_q[:, None] + o_d[None, :], mask=q_valid[:, None] & (o_d[None, :] < DK), other=0.)
    base_k = i_b.to(tl.int64) * stride_kb + i_h.to(tl.int64) * stride_kh
    base_v = i_b.to(tl.int64) * stride_vb + i_h.to(tl.int64) * stride_vh
    base_i = i_b.to(tl.int64) * stride_ib + i_h.to(tl.int64) * stride_ih

    # slot and token of each streamed column; without packing every column belongs to slot 0
    cols = tl.arange(0, BN)
    if PACK:
        k_slot = cols // MK
        k_tok0 = cols % MK
        slot_ok = (k_slot < G) & (r0 + k_slot < NR)
    else:
        k_slot = cols * 0
        k_tok0 = cols
        slot_ok = cols < BN
    row_i = base_i + (r0 + k_slot).to(tl.int64) * stride_ir

    b_m = tl.full([BM], NEG_INIT, dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BDV], dtype=tl.float32)
    for t in range(0, TOPK):
        # [BN] routed region (and weight) of each column's slot
        b_rid = tl.load(ridx + row_i + t, mask=slot_ok, other=0)
        if HAS_W:
            b_w = tl.load(rw + row_i + t, mask=slot_ok, other=0.)
        for c in range(0, NKC):
            k_tok = k_tok0 + c * BN
            k_valid = slot_ok & (k_tok < MK)
            row_k = _offsets(base_k, b_rid, k_tok, stride_kr, stride_km, ALIGN)
            row_v = _offsets(base_v, b_rid, k_tok, stride_vr, stride_vm, ALIGN)
            # [BN, BD]
            b_k = tl.load(k + row_k[:, None] + o_d[None, :], mask=k_valid[:, None] & (o_d[None, :] < DK), other=0.)
            # [BN, BDV]
            b_v = tl.load(v + row_v[:, None] + o_dv[None, :], mask=k_valid[:, None] & (o_dv[None, :] < DV),
                          other=0.)
            b_mask = q_valid[:, None] & k_valid[None, :]
            if PACK:
                b_mask = b_mask & (q_slot[:, None] == k_slot[None, :])
            # [BM, BN], logits in log2 units
            b_s = dot(b_q, tl.trans(b_k), DOT_FP32, PRECISION) * qk_scale
            if HAS_W:
                b_s = b_s * b_w[None, :]
            b_s = tl.where(b_mask, b_s, float('-inf'))
            b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
            b_alpha = tl.exp2(b_m - b_m_new)
            b_p = tl.exp2(b_s - b_m_new[:, None])
            b_l = b_l * b_alpha + tl.sum(b_p, 1)
            if HAS_W:
                b_p = b_p * b_w[None, :]
            b_acc = b_acc * b_alpha[:, None] + dot(b_p.to(b_v.dtype), b_v, DOT_FP32, PRECISION)
            b_m = b_m_new

    b_l = tl.where(b_l > 0, b_l, 1.)
    b_o = b_acc / b_l[:, None]
    row_o = _offsets(i_b.to(tl.int64) * stride_ob + i_h.to(tl.int64) * stride_oh, r0 + q_slot, q_tok,
                     stride_or, stride_om, ALIGN)
    tl.store(o + row_o[:, None] + o_dv[None, :], b_o.to(o.dtype.element_ty),
             mask=q_valid[:, None] & (o_dv[None, :] < DV))
    row_l = _offsets(i_b.to(tl.int64) * stride_lb + i_h.to(tl.int64) * stride_lh, r0 + q_slot, q_tok, stride_lr, 1, 1)
    tl.store(lse + row_l, (b_m + tl.log2(b_l)) * LN2, mask=q_valid)


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def bra_bwd_kernel_dq(
    q, k, v, ridx, rw, o, do, lse, dlse, delta, dq, dw, dk32, dv32,
    stride_qb, stride_qh, stride_qr, stride_qm,
    stride_kb, stride_kh, stride_kr, stride_km,
    stride_vb, stride_vh, stride_vr, stride_vm,
    stride_ob, stride_oh, stride_or, stride_om,
    stride_dob, stride_doh, stride_dor, stride_dom,
    stride_dqb, stride_dqh, stride_dqr, stride_dqm,
    stride_ab, stride_ah, stride_ar, stride_am,
    stride_lb, stride_lh, stride_lr,
    stride_ib, stride_ih, stride_ir,
    stride_wb, stride_wh, stride_wr, stride_wm,
    NH, NR, NQT, TOPK,
    scale,
    M: tl.constexpr, MK: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    NMT: tl.constexpr, NKC: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PACK: tl.constexpr, HAS_W: tl.constexpr, HAS_DLSE: tl.constexpr, STORE_DW: tl.constexpr, ATOMIC: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, ALIGN: tl.constexpr,
):
    # Q-stationary over the forward loop. Writes dQ, delta = rowsum(dO * O) - dLSE (for the dK/dV kernel), the
    # soft-routing gradient of every (query region, query tile, t) (summed over tiles by the launcher) and, when
    # ATOMIC, adds dK and dV into fp32 buffers (the non-deterministic single-pass variant)
    # one grid axis (B * H may exceed the 65535 of the second one); query tiles of one (batch, head) are adjacent,
    # so the routed regions they share stay in L2
    pid = tl.program_id(0)
    i_bh = pid // NQT
    i_b = i_bh // NH
    i_h = i_bh % NH
    r0, i_mt, q_slot, q_tok, q_valid = _stationary_rows(pid % NQT, NR, M, G, BM, NMT, PACK)

    o_d = tl.arange(0, BD)
    o_dv = tl.arange(0, BDV)
    m_d = q_valid[:, None] & (o_d[None, :] < DK)
    m_dv = q_valid[:, None] & (o_dv[None, :] < DV)
    q_reg = r0 + q_slot
    row_q = _offsets(i_b.to(tl.int64) * stride_qb + i_h.to(tl.int64) * stride_qh, q_reg, q_tok, stride_qr, stride_qm,
                     ALIGN)
    row_o = _offsets(i_b.to(tl.int64) * stride_ob + i_h.to(tl.int64) * stride_oh, q_reg, q_tok, stride_or, stride_om,
                     ALIGN)
    row_do = _offsets(i_b.to(tl.int64) * stride_dob + i_h.to(tl.int64) * stride_doh, q_reg, q_tok,
                      stride_dor, stride_dom, ALIGN)
    row_l = _offsets(i_b.to(tl.int64) * stride_lb + i_h.to(tl.int64) * stride_lh, q_reg, q_tok, stride_lr, 1, 1)
    # [BM, BD]
    b_q = tl.load(q + row_q[:, None] + o_d[None, :], mask=m_d, other=0.)
    # [BM, BDV]
    b_do = tl.load(do + row_do[:, None] + o_dv[None, :], mask=m_dv, other=0.)
    b_o = tl.load(o + row_o[:, None] + o_dv[None, :], mask=m_dv, other=0.)
    # [BM]
    b_delta = tl.sum(b_do.to(tl.float32) * b_o.to(tl.float32), 1)
    if HAS_DLSE:
        b_delta -= tl.load(dlse + row_l, mask=q_valid, other=0.)
    tl.store(delta + row_l, b_delta, mask=q_valid)
    b_lse = tl.load(lse + row_l, mask=q_valid, other=0.) * LOG2E

    base_k = i_b.to(tl.int64) * stride_kb + i_h.to(tl.int64) * stride_kh
    base_v = i_b.to(tl.int64) * stride_vb + i_h.to(tl.int64) * stride_vh
    base_a = i_b.to(tl.int64) * stride_ab + i_h.to(tl.int64) * stride_ah
    base_i = i_b.to(tl.int64) * stride_ib + i_h.to(tl.int64) * stride_ih
    cols = tl.arange(0, BN)
    if PACK:
        k_slot = cols // MK
        k_tok0 = cols % MK
        slot_ok = (k_slot < G) & (r0 + k_slot < NR)
    else:
        k_slot = cols * 0
        k_tok0 = cols
        slot_ok = cols < BN
    row_i = base_i + (r0 + k_slot).to(tl.int64) * stride_ir
    base_w = i_b.to(tl.int64) * stride_wb + i_h.to(tl.int64) * stride_wh + i_mt.to(tl.int64) * stride_wm
    o_g = tl.arange(0, GP)

    b_dq = tl.zeros([BM, BD], dtype=tl.float32)
    for t in range(0, TOPK):
        b_rid = tl.load(ridx + row_i + t, mask=slot_ok, other=0)
        if HAS_W:
            b_w = tl.load(rw + row_i + t, mask=slot_ok, other=0.)
        b_dw = tl.zeros([BN], dtype=tl.float32)
        for c in range(0, NKC):
            k_tok = k_tok0 + c * BN
            k_valid = slot_ok & (k_tok < MK)
            row_k = _offsets(base_k, b_rid, k_tok, stride_kr, stride_km, ALIGN)
            row_v = _offsets(base_v, b_rid, k_tok, stride_vr, stride_vm, ALIGN)
            # [BN, BD]
            b_k = tl.load(k + row_k[:, None] + o_d[None, :], mask=k_valid[:, None] & (o_d[None, :] < DK), other=0.)
            # [BN, BDV]
            b_v = tl.load(v + row_v[:, None] + o_dv[None, :], mask=k_valid[:, None] & (o_dv[None, :] < DV),
                          other=0.)
            b_mask = q_valid[:, None] & k_valid[None, :]
            if PACK:
                b_mask = b_mask & (q_slot[:, None] == k_slot[None, :])
            # [BM, BN] unweighted logits scale * q.k (natural units)
            b_c = dot(b_q, tl.trans(b_k), DOT_FP32, PRECISION) * scale
            # [BM, BN] dO . v
            b_dov = dot(b_do, tl.trans(b_v), DOT_FP32, PRECISION)
            if HAS_W:
                b_p = tl.where(b_mask, tl.exp2(b_c * (b_w * LOG2E)[None, :] - b_lse[:, None]), 0.)
                b_ds = b_p * (b_dov * b_w[None, :] - b_delta[:, None])
                if STORE_DW:
                    b_dw += tl.sum(b_ds * b_c + b_p * b_dov, 0)
                b_ds = b_ds * b_w[None, :]
                b_pw = b_p * b_w[None, :]
            else:
                b_p = tl.where(b_mask, tl.exp2(b_c * LOG2E - b_lse[:, None]), 0.)
                b_ds = b_p * (b_dov - b_delta[:, None])
                b_pw = b_p
            b_dq += dot(b_ds.to(b_k.dtype), b_k, DOT_FP32, PRECISION)
            if ATOMIC:
                # [BN, BD], [BN, BDV]
                b_dk = dot(tl.trans(b_ds.to(b_q.dtype)), b_q, DOT_FP32, PRECISION) * scale
                b_dv = dot(tl.trans(b_pw.to(b_do.dtype)), b_do, DOT_FP32, PRECISION)
                row_a = _offsets(base_a, b_rid, k_tok, stride_ar, stride_am, ALIGN)
                tl.atomic_add(dk32 + row_a[:, None] + o_d[None, :], b_dk,
                              mask=k_valid[:, None] & (o_d[None, :] < DK), sem='relaxed')
                tl.atomic_add(dv32 + row_a[:, None] + o_dv[None, :], b_dv,
                              mask=k_valid[:, None] & (o_dv[None, :] < DV), sem='relaxed')
        if STORE_DW:
            if PACK:
                # [GP]: column sums gathered per slot
                b_dwg = tl.sum(tl.where(k_slot[:, None] == o_g[None, :], b_dw[:, None], 0.), 0)
                tl.store(dw + base_w + (r0 + o_g).to(tl.int64) * stride_wr + t, b_dwg,
                         mask=(o_g < G) & (r0 + o_g < NR))
            else:
                tl.store(dw + base_w + r0.to(tl.int64) * stride_wr + t, tl.sum(b_dw, 0))

    row_dq = _offsets(i_b.to(tl.int64) * stride_dqb + i_h.to(tl.int64) * stride_dqh, q_reg, q_tok,
                      stride_dqr, stride_dqm, ALIGN)
    tl.store(dq + row_dq[:, None] + o_d[None, :], (b_dq * scale).to(dq.dtype.element_ty), mask=m_d)


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def bra_bwd_kernel_dkv(
    q, k, v, rw, do, lse, delta, offsets, pairs, order, dk, dv,
    stride_qb, stride_qh, stride_qr, stride_qm,
    stride_kb, stride_kh, stride_kr, stride_km,
    stride_vb, stride_vh, stride_vr, stride_vm,
    stride_dob, stride_doh, stride_dor, stride_dom,
    stride_dkb, stride_dkh, stride_dkr, stride_dkm,
    stride_dvb, stride_dvh, stride_dvr, stride_dvm,
    stride_lb, stride_lh, stride_lr,
    stride_ib, stride_ih, stride_ir,
    NH, NITEMS, NRK, TOPK,
    scale,
    M: tl.constexpr, MK: tl.constexpr, G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    NKT: tl.constexpr, NQC: tl.constexpr, SHARED: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PACK: tl.constexpr, HAS_W: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, ALIGN: tl.constexpr,
):
    # KV-stationary and deterministic: a program owns key rows of one key region (or G packed small ones) and walks
    # the (query region, t) pairs that route to it, in the order of the CSR lists (sorted by r * TOPK + t), for
    # every query tile; dK and dV accumulate in registers and are written once. Work items (list, key region) come
    # in `order`, by decreasing in-degree, so the longest lists start first and share a program with similar ones;
    # a list is a batch (routing shared by the heads, the head is program_id(1)) or a (batch, head)
    p0, i_kt, k_slot, k_tok, k_ok = _stationary_rows(tl.program_id(0), NITEMS, MK, G, BN, NKT, PACK)
    qk_scale = scale * LOG2E

    # [BN] work item, batch, head and key region of each key row
    k_item = tl.load(order + p0 + k_slot, mask=k_ok, other=0)
    if SHARED:
        k_b = k_item // NRK
        k_h = k_slot * 0 + tl.program_id(1)
    else:
        k_b = k_item // NRK // NH
        k_h = (k_item // NRK) % NH
    k_reg = k_item % NRK
    k_valid = k_ok & (k_tok < MK)

    o_d = tl.arange(0, BD)
    o_dv = tl.arange(0, BDV)
    m_d = k_valid[:, None] & (o_d[None, :] < DK)
    m_dv = k_valid[:, None] & (o_dv[None, :] < DV)
    row_k = _offsets(k_b.to(tl.int64) * stride_kb + k_h.to(tl.int64) * stride_kh, k_reg, k_tok, stride_kr, stride_km,
                     ALIGN)
    row_v = _offsets(k_b.to(tl.int64) * stride_vb + k_h.to(tl.int64) * stride_vh, k_reg, k_tok, stride_vr, stride_vm,
                     ALIGN)
    # [BN, BD]
    b_k = tl.load(k + row_k[:, None] + o_d[None, :], mask=m_d, other=0.)
    # [BN, BDV]
    b_v = tl.load(v + row_v[:, None] + o_dv[None, :], mask=m_dv, other=0.)

    # the same per query column (slot of the column); the CSR list of each column's slot
    cols = tl.arange(0, BM)
    if PACK:
        q_slot = cols // M
        q_tok0 = cols % M
        slot_ok = (q_slot < G) & (p0 + q_slot < NITEMS)
        q_item = tl.load(order + p0 + q_slot, mask=slot_ok, other=0)
        b_start = tl.load(offsets + q_item, mask=slot_ok, other=0)
        b_end = tl.load(offsets + q_item + 1, mask=slot_ok, other=0)
    else:
        # every column has the same work item: scalar loads broadcast to the columns (per-column loads of the same
        # values, used in two layouts below, fail Triton 3.6's layout-conversion pass in 16-bit)
        q_slot = cols * 0
        q_tok0 = cols
        slot_ok = cols < BM
        item = tl.load(order + p0)
        start = tl.load(offsets + item)
        q_item = q_slot + item
        b_start = q_slot + start
        b_end = q_slot + tl.load(offsets + item + 1)
    if SHARED:
        q_b = q_item // NRK
        q_h = q_slot * 0 + tl.program_id(1)
    else:
        q_b = q_item // NRK // NH
        q_h = (q_item // NRK) % NH
    n_pairs = tl.max(b_end - b_start, 0)

    base_q = q_b.to(tl.int64) * stride_qb + q_h.to(tl.int64) * stride_qh
    base_do = q_b.to(tl.int64) * stride_dob + q_h.to(tl.int64) * stride_doh
    base_l = q_b.to(tl.int64) * stride_lb + q_h.to(tl.int64) * stride_lh
    base_i = q_b.to(tl.int64) * stride_ib + q_h.to(tl.int64) * stride_ih

    b_dk = tl.zeros([BN, BD], dtype=tl.float32)
    b_dv = tl.zeros([BN, BDV], dtype=tl.float32)
    for it in range(0, n_pairs):
        pair_ok = slot_ok & (b_start + it < b_end)
        # [BM] (query region, t) of each column's slot
        if PACK:
            b_pair = tl.load(pairs + b_start + it, mask=pair_ok, other=0)
        else:
            b_pair = q_slot + tl.load(pairs + start + it)
        b_r = b_pair // TOPK
        if HAS_W:
            b_w = tl.load(rw + base_i + b_r.to(tl.int64) * stride_ir + b_pair % TOPK, mask=pair_ok, other=0.)
        for c in range(0, NQC):
            q_tok = q_tok0 + c * BM
            q_valid = pair_ok & (q_tok < M)
            row_q = _offsets(base_q, b_r, q_tok, stride_qr, stride_qm, ALIGN)
            row_do = _offsets(base_do, b_r, q_tok, stride_dor, stride_dom, ALIGN)
            row_l = _offsets(base_l, b_r, q_tok, stride_lr, 1, 1)
            # [BM, BD]
            b_q = tl.load(q + row_q[:, None] + o_d[None, :], mask=q_valid[:, None] & (o_d[None, :] < DK), other=0.)
            # [BM, BDV]
            b_do = tl.load(do + row_do[:, None] + o_dv[None, :], mask=q_valid[:, None] & (o_dv[None, :] < DV),
                           other=0.)
            # [BM]
            b_lse = tl.load(lse + row_l, mask=q_valid, other=0.) * LOG2E
            b_delta = tl.load(delta + row_l, mask=q_valid, other=0.)

            # [BN, BM]: keys are the rows here, so no product needs a transposed P or dS
            b_mask = k_valid[:, None] & q_valid[None, :]
            if PACK:
                b_mask = b_mask & (k_slot[:, None] == q_slot[None, :])
            b_st = dot(b_k, tl.trans(b_q), DOT_FP32, PRECISION) * qk_scale
            # [BN, BM] v . dO
            b_dpt = dot(b_v, tl.trans(b_do), DOT_FP32, PRECISION)
            if HAS_W:
                b_pt = tl.where(b_mask, tl.exp2(b_st * b_w[None, :] - b_lse[None, :]), 0.)
                b_dst = b_pt * (b_dpt * b_w[None, :] - b_delta[None, :]) * b_w[None, :]
                b_pt = b_pt * b_w[None, :]
            else:
                b_pt = tl.where(b_mask, tl.exp2(b_st - b_lse[None, :]), 0.)
                b_dst = b_pt * (b_dpt - b_delta[None, :])
            # [BN, BDV]
            b_dv += dot(b_pt.to(b_do.dtype), b_do, DOT_FP32, PRECISION)
            # [BN, BD]
            b_dk += dot(b_dst.to(b_q.dtype), b_q, DOT_FP32, PRECISION)

    row_dk = _offsets(k_b.to(tl.int64) * stride_dkb + k_h.to(tl.int64) * stride_dkh, k_reg, k_tok,
                      stride_dkr, stride_dkm, ALIGN)
    row_dv = _offsets(k_b.to(tl.int64) * stride_dvb + k_h.to(tl.int64) * stride_dvh, k_reg, k_tok,
                      stride_dvr, stride_dvm, ALIGN)
    tl.store(dk + row_dk[:, None] + o_d[None, :], (b_dk * scale).to(dk.dtype.element_ty), mask=m_d)
    tl.store(dv + row_dv[:, None] + o_dv[None, :], b_dv.to(dv.dtype.element_ty), mask=m_dv)
