"""Triton kernels of fused neighborhood attention (forward, dQ and dK/dV backward).

Every rank is mapped to 3-D by the launchers in ``triton_impl.py``: missing leading axes have size 1, kernel 1,
dilation 1 and stride 1, which makes every window formula degenerate to the single key 0. A program owns one tile
of in-group coordinates of one dilation group of one (batch, head): token ``(x', y', z')`` of group ``(g0, g1, g2)``
sits at ``b * sB + (x' * d0 + g0) * s0 + (y' * d1 + g1) * s1 + (z' * d2 + g2) * s2 + h * sH``, so dilation, strided
views and grouped-query heads need no data movement. Sizes and dilations are runtime ints (a new resolution does
not recompile); kernel size, stride, causal flags and tile shapes are compile-time constants.
"""
import triton
import triton.language as tl

from .._utils.triton_common import LN2, LOG2E, NEG_INIT, dot

# runtime ints that are never specialised (Triton would compile one kernel per value of `x % 16 == 0` and
# `x == 1`): sizes, dilations, head counts and every stride, so that one kernel serves every resolution, batch and
# layout; the alignment of the rows is passed as the constexpr ALIGN instead
_TENSORS = ('q', 'k', 'v', 'o', 'do', 'l', 'dq', 'dk', 'dv', 'ds')
RUNTIME_ARGS = (['L0', 'L1', 'L2', 'D0', 'D1', 'D2', 'NH', 'NHK', 'G']
                + [f'stride_{t}{axis}' for t in _TENSORS for axis in 'b012h']
                + [f'stride_r{axis}' for axis in 'h012'])


@triton.jit
def _window_start(x, length, K: tl.constexpr, S: tl.constexpr, CAUSAL: tl.constexpr):
    # first in-group key of the window of in-group query x (group length `length`)
    if CAUSAL:
        leader = tl.minimum((x // S) * S + S - 1, length - 1)
        start = tl.maximum(leader - K + 1, 0)
    else:
        leader = tl.minimum((x // S) * S + S // 2, length - 1)
        start = tl.minimum(tl.maximum(leader - K // 2, 0), length - K)
    return start


@triton.jit
def _window_end(x, start, K: tl.constexpr, CAUSAL: tl.constexpr):
    if CAUSAL:
        end = x + 1
    else:
        end = start + K
    return end


@triton.jit
def _query_range(js, je, length, K: tl.constexpr, S: tl.constexpr, CAUSAL: tl.constexpr, CAND: tl.constexpr):
    # exact [lo, hi] of the queries whose window meets keys [js, je]; window starts and ends are monotone, a query
    # always sees itself, and the inverse window of a key is within K + S - 2 of it, hence CAND candidates suffice
    c = tl.arange(0, CAND)
    x = je + c
    ok = (c <= K + S - 2) & (x < length) & (_window_start(x, length, K, S, CAUSAL) <= je)
    hi = tl.max(tl.where(ok, x, je), 0)
    x = js - c
    start = _window_start(x, length, K, S, CAUSAL)
    ok = (c <= K + S - 2) & (x >= 0) & (_window_end(x, start, K, CAUSAL) > js)
    lo = tl.min(tl.where(ok, x, js), 0)
    return lo, hi


@triton.jit
def _decode_program(pid, NH, L0, L1, L2, D0, D1, D2, T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr):
    # program id -> (head, batch, dilation group, first in-group coordinate of the tile, group lengths);
    # heads vary fastest so that programs sharing tokens (and GQA key heads) run side by side
    i_h = pid % NH
    rest = pid // NH
    NT0 = tl.cdiv(tl.cdiv(L0, D0), T0)
    NT1 = tl.cdiv(tl.cdiv(L1, D1), T1)
    NT2 = tl.cdiv(tl.cdiv(L2, D2), T2)
    i_t = rest % (NT0 * NT1 * NT2)
    rest = rest // (NT0 * NT1 * NT2)
    i_g = rest % (D0 * D1 * D2)
    i_b = rest // (D0 * D1 * D2)
    g0 = i_g // (D1 * D2)
    g1 = (i_g // D2) % D1
    g2 = i_g % D2
    n0 = (L0 - g0 + D0 - 1) // D0
    n1 = (L1 - g1 + D1 - 1) // D1
    n2 = (L2 - g2 + D2 - 1) // D2
    s0 = (i_t // (NT1 * NT2)) * T0
    s1 = ((i_t // NT2) % NT1) * T1
    s2 = (i_t % NT2) * T2
    return i_h, i_b, g0, g1, g2, s0, s1, s2, n0, n1, n2


@triton.jit
def _tile_coords(s0, s1, s2, T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr):
    # in-group coordinates of the T0 x T1 x T2 tile starting at (s0, s1, s2), row-major, [T0 * T1 * T2] each
    r = tl.arange(0, T0 * T1 * T2)
    return s0 + r // (T1 * T2), s1 + (r // T2) % T1, s2 + r % T2


@triton.jit
def _row_offsets(base, x0, x1, x2, D0, D1, D2, st0, st1, st2, ALIGN: tl.constexpr):
    # int64 element offsets of in-group coordinates (the group offset is already in `base`); strides are not
    # specialised, so the launcher states that they are multiples of ALIGN (16-byte vector loads need it); the hint
    # must sit on the op that computes the offsets, not on a function argument
    offsets = base + (x0 * D0).to(tl.int64) * st0 + (x1 * D1).to(tl.int64) * st1 + (x2 * D2).to(tl.int64) * st2
    if ALIGN > 1:
        offsets = tl.multiple_of(offsets, ALIGN)
    return offsets


@triton.jit
def _base_offset(i_b, i_h, g0, g1, g2, stb, st0, st1, st2, sth):
    return (i_b.to(tl.int64) * stb + g0.to(tl.int64) * st0 + g1.to(tl.int64) * st1 + g2.to(tl.int64) * st2
            + i_h.to(tl.int64) * sth)


@triton.jit
def _window_mask(valid, rel, width, K: tl.constexpr):
    # restrict a 2-D mask to keys whose offset from the query's window start (rel) is below the window's width
    # (broadcast); one unsigned compare covers both ends. Kernel 1 marks a dummy axis whose only coordinate is 0
    if K > 1:
        valid = valid & (rel.to(tl.uint32, bitcast=True) < width.to(tl.uint32, bitcast=True))
    return valid


@triton.jit
def _bias(rpb, i_h, dx0, dx1, dx2, mask, srh, sr0, sr1, sr2, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr):
    # gather of the legacy bias table at the in-group offsets key - query (dx, broadcast 2-D) + K - 1, in fp32;
    # the table is small: 32-bit offsets (half the registers of 64-bit ones over the whole [BM, BN] tile)
    idx = i_h * srh + (dx0 + K0 - 1) * sr0 + (dx1 + K1 - 1) * sr1 + (dx2 + K2 - 1) * sr2
    return tl.load(rpb + idx, mask=mask, other=0.).to(tl.float32)


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def na_fwd_kernel(
    q, k, v, rpb, o, lse,
    stride_qb, stride_q0, stride_q1, stride_q2, stride_qh,
    stride_kb, stride_k0, stride_k1, stride_k2, stride_kh,
    stride_vb, stride_v0, stride_v1, stride_v2, stride_vh,
    stride_ob, stride_o0, stride_o1, stride_o2, stride_oh,
    stride_lb, stride_l0, stride_l1, stride_l2, stride_lh,
    stride_rh, stride_r0, stride_r1, stride_r2,
    L0, L1, L2, D0, D1, D2,
    NH, G,
    scale,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    U0: tl.constexpr, U1: tl.constexpr, U2: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    HAS_RPB: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, ALIGN: tl.constexpr,
):
    i_h, i_b, g0, g1, g2, s0, s1, s2, n0, n1, n2 = _decode_program(
        tl.program_id(0), NH, L0, L1, L2, D0, D1, D2, T0, T1, T2)
    if (s0 >= n0) | (s1 >= n1) | (s2 >= n2):
        return
    i_hk = i_h // G
    qk_scale = scale * LOG2E

    qx0, qx1, qx2 = _tile_coords(s0, s1, s2, T0, T1, T2)
    q_valid = (qx0 < n0) & (qx1 < n1) & (qx2 < n2)
    ws0 = _window_start(qx0, n0, K0, S0, C0)
    ws1 = _window_start(qx1, n1, K1, S1, C1)
    ws2 = _window_start(qx2, n2, K2, S2, C2)
    we0 = _window_end(qx0, ws0, K0, C0)
    we1 = _window_end(qx1, ws1, K1, C1)
    we2 = _window_end(qx2, ws2, K2, C2)
    # keys of the whole tile: from the window start of its first query to the window end of its last one
    e0 = tl.minimum(s0 + T0, n0) - 1
    e1 = tl.minimum(s1 + T1, n1) - 1
    e2 = tl.minimum(s2 + T2, n2) - 1
    b0 = _window_start(s0, n0, K0, S0, C0)
    b1 = _window_start(s1, n1, K1, S1, C1)
    b2 = _window_start(s2, n2, K2, S2, C2)
    be0 = _window_end(e0, _window_start(e0, n0, K0, S0, C0), K0, C0)
    be1 = _window_end(e1, _window_start(e1, n1, K1, S1, C1), K1, C1)
    be2 = _window_end(e2, _window_start(e2, n2, K2, S2, C2), K2, C2)
    nb0 = tl.cdiv(be0 - b0, U0)
    nb1 = tl.cdiv(be1 - b1, U1)
    nb2 = tl.cdiv(be2 - b2, U2)

    o_d = tl.arange(0, BD)
    o_dv = tl.arange(0, BDV)
    base_q = _base_offset(i_b, i_h, g0, g1, g2, stride_qb, stride_q0, stride_q1, stride_q2, stride_qh)
    row_q = _row_offsets(base_q, qx0, qx1, qx2, D0, D1, D2, stride_q0, stride_q1, stride_q2, ALIGN)
    # [BM, BD]
    b_q = tl.load(q + row_q[:, None] + o_d[None, :], mask=q_valid[:, None] & (o_d[None, :] < DK), other=0.)
    base_k = _base_offset(i_b, i_hk, g0, g1, g2, stride_kb, stride_k0, stride_k1, stride_k2, stride_kh)
    base_v = _base_offset(i_b, i_hk, g0, g1, g2, stride_vb, stride_v0, stride_v1, stride_v2, stride_vh)

    b_m = tl.full([T0 * T1 * T2], NEG_INIT, dtype=tl.float32)
    b_l = tl.zeros([T0 * T1 * T2], dtype=tl.float32)
    b_acc = tl.zeros([T0 * T1 * T2, BDV], dtype=tl.float32)
    for it in range(0, nb0 * nb1 * nb2):
        kx0, kx1, kx2 = _tile_coords(
            b0 + (it // (nb1 * nb2)) * U0, b1 + ((it // nb2) % nb1) * U1, b2 + (it % nb2) * U2, U0, U1, U2)
        k_valid = (kx0 < be0) & (kx1 < be1) & (kx2 < be2)
        row_k = _row_offsets(base_k, kx0, kx1, kx2, D0, D1, D2, stride_k0, stride_k1, stride_k2, ALIGN)
        row_v = _row_offsets(base_v, kx0, kx1, kx2, D0, D1, D2, stride_v0, stride_v1, stride_v2, ALIGN)
        # [BN, BD]
        b_k = tl.load(k + row_k[:, None] + o_d[None, :], mask=k_valid[:, None] & (o_d[None, :] < DK), other=0.)
        # [BN, BDV]
        b_v = tl.load(v + row_v[:, None] + o_dv[None, :], mask=k_valid[:, None] & (o_dv[None, :] < DV), other=0.)

        b_mask = q_valid[:, None] & k_valid[None, :]
        b_mask = _window_mask(b_mask, kx0[None, :] - ws0[:, None], (we0 - ws0)[:, None], K0)
        b_mask = _window_mask(b_mask, kx1[None, :] - ws1[:, None], (we1 - ws1)[:, None], K1)
        b_mask = _window_mask(b_mask, kx2[None, :] - ws2[:, None], (we2 - ws2)[:, None], K2)
        # [BM, BN], logits in log2 units
        b_s = dot(b_q, tl.trans(b_k), DOT_FP32, PRECISION) * qk_scale
        if HAS_RPB:
            b_s += LOG2E * _bias(rpb, i_h, kx0[None, :] - qx0[:, None], kx1[None, :] - qx1[:, None],
                                 kx2[None, :] - qx2[:, None], b_mask, stride_rh, stride_r0, stride_r1, stride_r2,
                                 K0, K1, K2)
        b_s = tl.where(b_mask, b_s, float('-inf'))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_alpha = tl.exp2(b_m - b_m_new)
        b_p = tl.exp2(b_s - b_m_new[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None] + dot(b_p.to(b_v.dtype), b_v, DOT_FP32, PRECISION)
        b_m = b_m_new

    b_l = tl.where(b_l > 0, b_l, 1.)
    b_o = b_acc / b_l[:, None]
    base_o = _base_offset(i_b, i_h, g0, g1, g2, stride_ob, stride_o0, stride_o1, stride_o2, stride_oh)
    row_o = _row_offsets(base_o, qx0, qx1, qx2, D0, D1, D2, stride_o0, stride_o1, stride_o2, ALIGN)
    tl.store(o + row_o[:, None] + o_dv[None, :], b_o.to(o.dtype.element_ty),
             mask=q_valid[:, None] & (o_dv[None, :] < DV))
    base_l = _base_offset(i_b, i_h, g0, g1, g2, stride_lb, stride_l0, stride_l1, stride_l2, stride_lh)
    row_l = _row_offsets(base_l, qx0, qx1, qx2, D0, D1, D2, stride_l0, stride_l1, stride_l2, 1)
    tl.store(lse + row_l, (b_m + tl.log2(b_l)) * LN2, mask=q_valid)


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def na_bwd_kernel_dq(
    q, k, v, rpb, o, do, lse, dlse, delta, dq, ds,
    stride_qb, stride_q0, stride_q1, stride_q2, stride_qh,
    stride_kb, stride_k0, stride_k1, stride_k2, stride_kh,
    stride_vb, stride_v0, stride_v1, stride_v2, stride_vh,
    stride_ob, stride_o0, stride_o1, stride_o2, stride_oh,
    stride_dob, stride_do0, stride_do1, stride_do2, stride_doh,
    stride_lb, stride_l0, stride_l1, stride_l2, stride_lh,
    stride_dqb, stride_dq0, stride_dq1, stride_dq2, stride_dqh,
    stride_dsb, stride_ds0, stride_ds1, stride_ds2, stride_dsh,
    stride_rh, stride_r0, stride_r1, stride_r2,
    L0, L1, L2, D0, D1, D2,
    NH, G,
    scale,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    U0: tl.constexpr, U1: tl.constexpr, U2: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    HAS_RPB: tl.constexpr, HAS_DLSE: tl.constexpr, STORE_DS: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, ALIGN: tl.constexpr,
):
    # Q-stationary over the forward box; also writes delta = rowsum(dO * O) - dlse for the dK/dV kernel and, for the
    # bias gradient, dS of every (query, window offset) pair
    i_h, i_b, g0, g1, g2, s0, s1, s2, n0, n1, n2 = _decode_program(
        tl.program_id(0), NH, L0, L1, L2, D0, D1, D2, T0, T1, T2)
    if (s0 >= n0) | (s1 >= n1) | (s2 >= n2):
        return
    i_hk = i_h // G
    qk_scale = scale * LOG2E

    qx0, qx1, qx2 = _tile_coords(s0, s1, s2, T0, T1, T2)
    q_valid = (qx0 < n0) & (qx1 < n1) & (qx2 < n2)
    ws0 = _window_start(qx0, n0, K0, S0, C0)
    ws1 = _window_start(qx1, n1, K1, S1, C1)
    ws2 = _window_start(qx2, n2, K2, S2, C2)
    we0 = _window_end(qx0, ws0, K0, C0)
    we1 = _window_end(qx1, ws1, K1, C1)
    we2 = _window_end(qx2, ws2, K2, C2)
    e0 = tl.minimum(s0 + T0, n0) - 1
    e1 = tl.minimum(s1 + T1, n1) - 1
    e2 = tl.minimum(s2 + T2, n2) - 1
    b0 = _window_start(s0, n0, K0, S0, C0)
    b1 = _window_start(s1, n1, K1, S1, C1)
    b2 = _window_start(s2, n2, K2, S2, C2)
    be0 = _window_end(e0, _window_start(e0, n0, K0, S0, C0), K0, C0)
    be1 = _window_end(e1, _window_start(e1, n1, K1, S1, C1), K1, C1)
    be2 = _window_end(e2, _window_start(e2, n2, K2, S2, C2), K2, C2)
    nb0 = tl.cdiv(be0 - b0, U0)
    nb1 = tl.cdiv(be1 - b1, U1)
    nb2 = tl.cdiv(be2 - b2, U2)

    o_d = tl.arange(0, BD)
    o_dv = tl.arange(0, BDV)
    m_d = q_valid[:, None] & (o_d[None, :] < DK)
    m_dv = q_valid[:, None] & (o_dv[None, :] < DV)
    row_q = _row_offsets(_base_offset(i_b, i_h, g0, g1, g2, stride_qb, stride_q0, stride_q1, stride_q2, stride_qh),
                         qx0, qx1, qx2, D0, D1, D2, stride_q0, stride_q1, stride_q2, ALIGN)
    row_o = _row_offsets(_base_offset(i_b, i_h, g0, g1, g2, stride_ob, stride_o0, stride_o1, stride_o2, stride_oh),
                         qx0, qx1, qx2, D0, D1, D2, stride_o0, stride_o1, stride_o2, ALIGN)
    row_do = _row_offsets(
        _base_offset(i_b, i_h, g0, g1, g2, stride_dob, stride_do0, stride_do1, stride_do2, stride_doh),
        qx0, qx1, qx2, D0, D1, D2, stride_do0, stride_do1, stride_do2, ALIGN)
    row_l = _row_offsets(_base_offset(i_b, i_h, g0, g1, g2, stride_lb, stride_l0, stride_l1, stride_l2, stride_lh),
                         qx0, qx1, qx2, D0, D1, D2, stride_l0, stride_l1, stride_l2, 1)
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
    if STORE_DS:
        row_ds = _row_offsets(
            _base_offset(i_b, i_h, g0, g1, g2, stride_dsb, stride_ds0, stride_ds1, stride_ds2, stride_dsh),
            qx0, qx1, qx2, D0, D1, D2, stride_ds0, stride_ds1, stride_ds2, 1)

    base_k = _base_offset(i_b, i_hk, g0, g1, g2, stride_kb, stride_k0, stride_k1, stride_k2, stride_kh)
    base_v = _base_offset(i_b, i_hk, g0, g1, g2, stride_vb, stride_v0, stride_v1, stride_v2, stride_vh)
    b_dq = tl.zeros([T0 * T1 * T2, BD], dtype=tl.float32)
    for it in range(0, nb0 * nb1 * nb2):
        kx0, kx1, kx2 = _tile_coords(
            b0 + (it // (nb1 * nb2)) * U0, b1 + ((it // nb2) % nb1) * U1, b2 + (it % nb2) * U2, U0, U1, U2)
        k_valid = (kx0 < be0) & (kx1 < be1) & (kx2 < be2)
        row_k = _row_offsets(base_k, kx0, kx1, kx2, D0, D1, D2, stride_k0, stride_k1, stride_k2, ALIGN)
        row_v = _row_offsets(base_v, kx0, kx1, kx2, D0, D1, D2, stride_v0, stride_v1, stride_v2, ALIGN)
        # [BN, BD]
        b_k = tl.load(k + row_k[:, None] + o_d[None, :], mask=k_valid[:, None] & (o_d[None, :] < DK), other=0.)
        # [BN, BDV]
        b_v = tl.load(v + row_v[:, None] + o_dv[None, :], mask=k_valid[:, None] & (o_dv[None, :] < DV), other=0.)

        b_mask = q_valid[:, None] & k_valid[None, :]
        b_mask = _window_mask(b_mask, kx0[None, :] - ws0[:, None], (we0 - ws0)[:, None], K0)
        b_mask = _window_mask(b_mask, kx1[None, :] - ws1[:, None], (we1 - ws1)[:, None], K1)
        b_mask = _window_mask(b_mask, kx2[None, :] - ws2[:, None], (we2 - ws2)[:, None], K2)
        # [BM, BN]
        b_s = dot(b_q, tl.trans(b_k), DOT_FP32, PRECISION) * qk_scale
        if HAS_RPB:
            b_s += LOG2E * _bias(rpb, i_h, kx0[None, :] - qx0[:, None], kx1[None, :] - qx1[:, None],
                                 kx2[None, :] - qx2[:, None], b_mask, stride_rh, stride_r0, stride_r1, stride_r2,
                                 K0, K1, K2)
        b_p = tl.where(b_mask, tl.exp2(b_s - b_lse[:, None]), 0.)
        # [BM, BN]
        b_dp = dot(b_do, tl.trans(b_v), DOT_FP32, PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq += dot(b_ds.to(b_k.dtype), b_k, DOT_FP32, PRECISION)
        if STORE_DS:
            # window offset (a0, a1, a2) of each key, flattened row-major over the kernel
            b_off = ((kx0[None, :] - ws0[:, None]) * K1 + (kx1[None, :] - ws1[:, None])) * K2 + \
                (kx2[None, :] - ws2[:, None])
            tl.store(ds + row_ds[:, None] + b_off, b_ds, mask=b_mask)

    row_dq = _row_offsets(
        _base_offset(i_b, i_h, g0, g1, g2, stride_dqb, stride_dq0, stride_dq1, stride_dq2, stride_dqh),
        qx0, qx1, qx2, D0, D1, D2, stride_dq0, stride_dq1, stride_dq2, ALIGN)
    tl.store(dq + row_dq[:, None] + o_d[None, :], (b_dq * scale).to(dq.dtype.element_ty), mask=m_d)


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def na_bwd_kernel_dkv(
    q, k, v, rpb, do, lse, delta, dk, dv,
    stride_qb, stride_q0, stride_q1, stride_q2, stride_qh,
    stride_kb, stride_k0, stride_k1, stride_k2, stride_kh,
    stride_vb, stride_v0, stride_v1, stride_v2, stride_vh,
    stride_dob, stride_do0, stride_do1, stride_do2, stride_doh,
    stride_lb, stride_l0, stride_l1, stride_l2, stride_lh,
    stride_dkb, stride_dk0, stride_dk1, stride_dk2, stride_dkh,
    stride_dvb, stride_dv0, stride_dv1, stride_dv2, stride_dvh,
    stride_rh, stride_r0, stride_r1, stride_r2,
    L0, L1, L2, D0, D1, D2,
    NHK, G,
    scale,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    U0: tl.constexpr, U1: tl.constexpr, U2: tl.constexpr,
    CAND0: tl.constexpr, CAND1: tl.constexpr, CAND2: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    HAS_RPB: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, ALIGN: tl.constexpr,
):
    # KV-stationary: a program owns a T0 x T1 x T2 tile of keys of one key head and walks the U0 x U1 x U2 query
    # sub-tiles of the exact inverse box, for each of the G query heads of that key head (deterministic, no atomics)
    i_hk, i_b, g0, g1, g2, s0, s1, s2, n0, n1, n2 = _decode_program(
        tl.program_id(0), NHK, L0, L1, L2, D0, D1, D2, T0, T1, T2)
    if (s0 >= n0) | (s1 >= n1) | (s2 >= n2):
        return
    qk_scale = scale * LOG2E

    kx0, kx1, kx2 = _tile_coords(s0, s1, s2, T0, T1, T2)
    k_valid = (kx0 < n0) & (kx1 < n1) & (kx2 < n2)
    lo0, hi0 = _query_range(s0, tl.minimum(s0 + T0, n0) - 1, n0, K0, S0, C0, CAND0)
    lo1, hi1 = _query_range(s1, tl.minimum(s1 + T1, n1) - 1, n1, K1, S1, C1, CAND1)
    lo2, hi2 = _query_range(s2, tl.minimum(s2 + T2, n2) - 1, n2, K2, S2, C2, CAND2)
    nb0 = tl.cdiv(hi0 - lo0 + 1, U0)
    nb1 = tl.cdiv(hi1 - lo1 + 1, U1)
    nb2 = tl.cdiv(hi2 - lo2 + 1, U2)
    nb = nb0 * nb1 * nb2

    o_d = tl.arange(0, BD)
    o_dv = tl.arange(0, BDV)
    m_d = k_valid[:, None] & (o_d[None, :] < DK)
    m_dv = k_valid[:, None] & (o_dv[None, :] < DV)
    row_k = _row_offsets(_base_offset(i_b, i_hk, g0, g1, g2, stride_kb, stride_k0, stride_k1, stride_k2, stride_kh),
                         kx0, kx1, kx2, D0, D1, D2, stride_k0, stride_k1, stride_k2, ALIGN)
    row_v = _row_offsets(_base_offset(i_b, i_hk, g0, g1, g2, stride_vb, stride_v0, stride_v1, stride_v2, stride_vh),
                         kx0, kx1, kx2, D0, D1, D2, stride_v0, stride_v1, stride_v2, ALIGN)
    # [BN, BD]
    b_k = tl.load(k + row_k[:, None] + o_d[None, :], mask=m_d, other=0.)
    # [BN, BDV]
    b_v = tl.load(v + row_v[:, None] + o_dv[None, :], mask=m_dv, other=0.)

    b_dk = tl.zeros([T0 * T1 * T2, BD], dtype=tl.float32)
    b_dv = tl.zeros([T0 * T1 * T2, BDV], dtype=tl.float32)
    for it in range(0, G * nb):
        i_h = i_hk * G + it // nb
        j = it % nb
        qx0, qx1, qx2 = _tile_coords(
            lo0 + (j // (nb1 * nb2)) * U0, lo1 + ((j // nb2) % nb1) * U1, lo2 + (j % nb2) * U2, U0, U1, U2)
        q_valid = (qx0 < n0) & (qx1 < n1) & (qx2 < n2)
        ws0 = _window_start(qx0, n0, K0, S0, C0)
        ws1 = _window_start(qx1, n1, K1, S1, C1)
        ws2 = _window_start(qx2, n2, K2, S2, C2)
        we0 = _window_end(qx0, ws0, K0, C0)
        we1 = _window_end(qx1, ws1, K1, C1)
        we2 = _window_end(qx2, ws2, K2, C2)
        row_q = _row_offsets(
            _base_offset(i_b, i_h, g0, g1, g2, stride_qb, stride_q0, stride_q1, stride_q2, stride_qh),
            qx0, qx1, qx2, D0, D1, D2, stride_q0, stride_q1, stride_q2, ALIGN)
        row_do = _row_offsets(
            _base_offset(i_b, i_h, g0, g1, g2, stride_dob, stride_do0, stride_do1, stride_do2, stride_doh),
            qx0, qx1, qx2, D0, D1, D2, stride_do0, stride_do1, stride_do2, ALIGN)
        row_l = _row_offsets(
            _base_offset(i_b, i_h, g0, g1, g2, stride_lb, stride_l0, stride_l1, stride_l2, stride_lh),
            qx0, qx1, qx2, D0, D1, D2, stride_l0, stride_l1, stride_l2, 1)
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
        b_mask = _window_mask(b_mask, kx0[:, None] - ws0[None, :], (we0 - ws0)[None, :], K0)
        b_mask = _window_mask(b_mask, kx1[:, None] - ws1[None, :], (we1 - ws1)[None, :], K1)
        b_mask = _window_mask(b_mask, kx2[:, None] - ws2[None, :], (we2 - ws2)[None, :], K2)
        b_st = dot(b_k, tl.trans(b_q), DOT_FP32, PRECISION) * qk_scale
        if HAS_RPB:
            b_st += LOG2E * _bias(rpb, i_h, kx0[:, None] - qx0[None, :], kx1[:, None] - qx1[None, :],
                                  kx2[:, None] - qx2[None, :], b_mask, stride_rh, stride_r0, stride_r1, stride_r2,
                                  K0, K1, K2)
        b_pt = tl.where(b_mask, tl.exp2(b_st - b_lse[None, :]), 0.)
        # [BN, BDV]
        b_dv += dot(b_pt.to(b_do.dtype), b_do, DOT_FP32, PRECISION)
        # [BN, BM]
        b_dpt = dot(b_v, tl.trans(b_do), DOT_FP32, PRECISION)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        # [BN, BD]
        b_dk += dot(b_dst.to(b_q.dtype), b_q, DOT_FP32, PRECISION)

    row_dk = _row_offsets(
        _base_offset(i_b, i_hk, g0, g1, g2, stride_dkb, stride_dk0, stride_dk1, stride_dk2, stride_dkh),
        kx0, kx1, kx2, D0, D1, D2, stride_dk0, stride_dk1, stride_dk2, ALIGN)
    row_dv = _row_offsets(
        _base_offset(i_b, i_hk, g0, g1, g2, stride_dvb, stride_dv0, stride_dv1, stride_dv2, stride_dvh),
        kx0, kx1, kx2, D0, D1, D2, stride_dv0, stride_dv1, stride_dv2, ALIGN)
    tl.store(dk + row_dk[:, None] + o_d[None, :], (b_dk * scale).to(dk.dtype.element_ty), mask=m_d)
    tl.store(dv + row_dv[:, None] + o_dv[None, :], b_dv.to(dv.dtype.element_ty), mask=m_dv)
