"""The bi-level routing attention spec (reference) and the torch backend against it, through the public API.

Triton-specific cases live in test_routing_triton.py; this file holds the reference against an independent
per-region loop, fp64 gradcheck, the torch backend against the reference, argument validation and backend
selection.
"""
from __future__ import annotations

import functools
import itertools

import pytest
import torch
from kernel_helpers import ROW_TOLERANCES, TRITON_DEVICE, assert_close, assert_rows_close

from zoo_kernels import routed_attention
from zoo_kernels.routing.reference import bra_reference


def make_inputs(batch=2, heads=2, n_q=5, m=4, n_k=7, mk=6, dim=16, dim_v=None, topk=3, per_head=False,
                soft=False, dtype=torch.float32, requires_grad=True):
    """Random q, k, v, distinct routing indices (as torch.topk gives) and, when ``soft``, positive weights."""
    q = torch.randn(batch, heads, n_q, m, dim, dtype=dtype, requires_grad=requires_grad)
    k = torch.randn(batch, heads, n_k, mk, dim, dtype=dtype, requires_grad=requires_grad)
    v = torch.randn(batch, heads, n_k, mk, dim_v or dim, dtype=dtype, requires_grad=requires_grad)
    lead = (batch, heads, n_q) if per_head else (batch, n_q)
    r_idx = torch.rand(*lead, n_k).topk(topk, dim=-1).indices
    r_weight = torch.rand(*lead, topk).add(0.5).requires_grad_(requires_grad) if soft else None
    return q, k, v, r_idx, r_weight


def naive_bra(q, k, v, r_idx, r_weight, scale):
    """One (batch, head, query region) at a time: concatenate the routed regions' rows and attend, in fp64."""
    batch, heads, n_q = q.shape[:3]
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    for b, h, r in itertools.product(range(batch), range(heads), range(n_q)):
        sel = r_idx[b, r] if r_idx.dim() == 3 else r_idx[b, h, r]
        w = None
        if r_weight is not None:
            w = r_weight[b, r] if r_weight.dim() == 3 else r_weight[b, h, r]
        keys = torch.cat([k[b, h, i].double() * (w[t].double() if w is not None else 1) for t, i in enumerate(sel)])
        values = torch.cat([v[b, h, i].double() * (w[t].double() if w is not None else 1)
                            for t, i in enumerate(sel)])
        out[b, h, r] = torch.softmax(q[b, h, r].double() @ keys.T * scale, -1) @ values
    return out


def check_backend(backend, q, k, v, r_idx, r_weight, *, scale=None, lse_grad=True, backward=True):
    """``backend`` and the fp64 reference on the same values: out, lse and the gradients of q, k, v, r_weight, row by
    row (one query or key token of one head: ``kernel_helpers.row_errors``)."""
    from zoo_kernels._utils.triton_launch import tf32_allowed

    fwd_tol, grad_tol = ROW_TOLERANCES['tf32' if q.dtype == torch.float32 and tf32_allowed() else q.dtype]
    leaves = [t for t in (q, k, v, r_weight) if t is not None and t.requires_grad]
    ref_leaves = {id(t): t.detach().double().requires_grad_(t.requires_grad) for t in (q, k, v, r_weight)
                  if t is not None}
    ref_w = ref_leaves[id(r_weight)] if r_weight is not None else None
    ref_out, ref_lse = routed_attention(ref_leaves[id(q)], ref_leaves[id(k)], ref_leaves[id(v)], r_idx, scale=scale,
                                        r_weight=ref_w, backend='reference', return_lse=True)
    out, lse = routed_attention(q, k, v, r_idx, scale=scale, r_weight=r_weight, backend=backend, return_lse=True)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert_rows_close('out', ref_out, out, fwd_tol)
    assert_rows_close('lse', ref_lse, lse, fwd_tol, vector_dim=False)
    if not backward:
        return
    grad_out = torch.randn_like(ref_out)
    grad_lse = torch.randn_like(ref_lse)
    ref_loss = (ref_out * grad_out).sum() + ((ref_lse * grad_lse).sum() if lse_grad else 0)
    ref_grads = torch.autograd.grad(ref_loss, [ref_leaves[id(t)] for t in leaves])
    loss = (out.double() * grad_out).sum() + ((lse.double() * grad_lse).sum() if lse_grad else 0)
    grads = torch.autograd.grad(loss, leaves)
    names = {id(q): 'dq', id(k): 'dk', id(v): 'dv', id(r_weight): 'dr_weight'}
    for leaf, ref_grad, grad in zip(leaves, ref_grads, grads):
        assert grad.dtype == leaf.dtype, f'{names[id(leaf)]} has dtype {grad.dtype}, its input {leaf.dtype}'
        assert_rows_close(names[id(leaf)], ref_grad, grad, max(grad_tol, ROW_TOLERANCES[leaf.dtype][1]))


@pytest.mark.parametrize(('per_head', 'soft'), [(False, False), (True, False), (False, True), (True, True)])
def test_reference_matches_per_region_loop(per_head, soft):
    q, k, v, r_idx, r_weight = make_inputs(per_head=per_head, soft=soft, dim_v=8, requires_grad=False)
    out, lse = bra_reference(q, k, v, r_idx, r_weight, 0.3)
    assert_close('out', naive_bra(q, k, v, r_idx, r_weight, 0.3), out, 1e-6)
    assert lse.shape == q.shape[:-1] and lse.dtype == torch.float32


def test_reference_lse_is_the_log_normaliser():
    q, k, v, r_idx, _ = make_inputs(requires_grad=False)
    _, lse = bra_reference(q, k, v, r_idx, None, 0.25)
    # attention of a value of ones to itself: exp(lse) is the sum of exp(logits) over the routed keys
    b, h, r = 1, 0, 3
    keys = torch.cat([k[b, h, i] for i in r_idx[b, r]])
    assert_close('lse', torch.logsumexp(q[b, h, r] @ keys.T * 0.25, -1), lse[b, h, r], 1e-6)


def test_duplicate_indices_count_twice():
    q, k, v, _, _ = make_inputs(batch=1, heads=1, n_q=2, requires_grad=False)
    r_idx = torch.tensor([[[3, 3, 1], [0, 5, 0]]])
    for backend in ('reference', 'torch'):
        out = routed_attention(q, k, v, r_idx, backend=backend)
        assert_close(backend, naive_bra(q, k, v, r_idx, None, 16 ** -0.5), out, 1e-5)


def test_reference_gradcheck_fp64():
    q, k, v, r_idx, r_weight = make_inputs(batch=1, heads=2, n_q=3, m=2, n_k=4, mk=3, dim=4, dim_v=3, topk=2,
                                           per_head=True, soft=True, dtype=torch.float64)
    r_weight = r_weight.detach().double().requires_grad_()

    def fn(q, k, v, w):
        # the lse is returned in fp32 (too coarse for finite differences); its gradient is checked per backend
        return bra_reference(q, k, v, r_idx, w, 0.4)[0]

    assert torch.autograd.gradcheck(fn, (q, k, v, r_weight))


TORCH_CASES = [
    # make_inputs kwargs
    pytest.param(dict(), id='nR5-nRk7-M4-Mk6-topk3-shared'),
    pytest.param(dict(topk=1), id='topk1'),
    pytest.param(dict(topk=7), id='topk-all'),
    pytest.param(dict(per_head=True), id='per-head'),
    pytest.param(dict(soft=True), id='soft-shared'),
    pytest.param(dict(soft=True, per_head=True, dim_v=8), id='soft-per-head-dv8'),
    pytest.param(dict(m=7, mk=5, dim=24), id='M7-Mk5-D24'),
    pytest.param(dict(m=64, mk=16, n_q=3, n_k=4, dim=32, topk=2), id='M64-Mk16-D32'),
    pytest.param(dict(m=16, mk=64, n_q=4, n_k=3, dim=32, dim_v=16, topk=2, soft=True), id='M16-Mk64-Dv16-soft'),
    pytest.param(dict(dtype=torch.float64, soft=True), id='fp64'),
]


@pytest.mark.parametrize('kwargs', TORCH_CASES)
def test_torch_matches_reference(kwargs, nan_poisoning):
    check_backend('torch', *make_inputs(**kwargs), scale=0.3)


@pytest.mark.parametrize('dim_v', [16, 8])
def test_torch_gradient_without_lse(dim_v, nan_poisoning):
    # the CPU flash kernel serves the backward when D == Dv and the lse has no gradient
    check_backend('torch', *make_inputs(dim_v=dim_v, soft=True), lse_grad=False)


def test_torch_float16(nan_poisoning):
    check_backend('torch', *make_inputs(dtype=torch.float16, dim=32, m=16, mk=16))


def test_torch_chunks_match_one_chunk(monkeypatch, nan_poisoning):
    from zoo_kernels.routing import torch_impl
    q, k, v, r_idx, r_weight = make_inputs(soft=True, per_head=True)
    whole = routed_attention(q, k, v, r_idx, r_weight=r_weight, backend='torch')
    grads = torch.autograd.grad(whole.square().sum(), (q, k, v, r_weight))
    monkeypatch.setattr(torch_impl, '_CHUNK_BYTES', 1)
    chunked = routed_attention(q, k, v, r_idx, r_weight=r_weight, backend='torch')
    assert_close('out', whole, chunked, 1e-6)
    for name, a, b in zip(('dq', 'dk', 'dv', 'dw'), grads, torch.autograd.grad(chunked.square().sum(),
                                                                                (q, k, v, r_weight))):
        assert_close(name, a, b, 1e-6)


@pytest.mark.parametrize(('per_head', 'soft', 'dim_v', 'lse_grad', 'shared_idx'), [
    (False, False, None, False, False), (True, True, None, False, True), (False, True, 8, True, False)])
def test_torch_gradients_under_vmap(per_head, soft, dim_v, lse_grad, shared_idx):
    """``torch.func.vmap(grad(...))`` over groups of two batch elements (per-group gradients) equals autograd on each
    group alone: the flash path, soft routing with per-head indices shared by the groups (not vmapped), and the
    matmul path (``D != Dv``) with a gradient through the log-sum-exp."""
    from torch.func import grad, vmap
    groups, per_group = 3, 2
    q, k, v, r_idx, r_weight = make_inputs(batch=groups * per_group, per_head=per_head, soft=soft, dim_v=dim_v,
                                           dtype=torch.float64)
    if shared_idx:
        r_idx = r_idx[:per_group]
    grad_out = torch.randn(q.shape[:-1] + v.shape[-1:], dtype=torch.float64)
    grad_lse = torch.randn(q.shape[:-1], dtype=torch.float64)
    leaves = (q, k, v) + ((r_weight,) if soft else ())

    def loss(q, k, v, *w, r_idx, g_out, g_lse):
        out, lse = routed_attention(q, k, v, r_idx, r_weight=w[0] if w else None, backend='torch', return_lse=True)
        return (out * g_out).sum() + ((lse.double() * g_lse).sum() if lse_grad else 0)

    def per_group_grads(r, *tensors):
        *xs, g_out, g_lse = tensors
        return grad(loss, argnums=tuple(range(len(xs))))(*xs, r_idx=r, g_out=g_out, g_lse=g_lse)

    grouped = [t.detach().unflatten(0, (groups, per_group)) for t in (*leaves, grad_out, grad_lse)]
    got = vmap(per_group_grads, in_dims=(None if shared_idx else 0, *[0] * len(grouped)))(
        r_idx if shared_idx else r_idx.unflatten(0, (groups, per_group)), *grouped)
    for g in range(groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        one = [t[rows].detach().requires_grad_() for t in leaves]
        expected = torch.autograd.grad(loss(*one, r_idx=r_idx if shared_idx else r_idx[rows], g_out=grad_out[rows],
                                            g_lse=grad_lse[rows]), one)
        for name, got_g, e in zip(('dq', 'dk', 'dv', 'dr_weight'), got, expected):
            assert_close(name, e, got_g[g], 1e-10)


def test_torch_double_backward_is_refused():
    q, k, v, r_idx, _ = make_inputs(dtype=torch.float64)
    dq, = torch.autograd.grad(routed_attention(q, k, v, r_idx, backend='torch').sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match='differentiable once'):
        torch.autograd.grad(dq.sum(), k)


def test_default_scale_is_head_dim():
    q, k, v, r_idx, _ = make_inputs(requires_grad=False)
    assert torch.equal(routed_attention(q, k, v, r_idx, backend='reference'),
                       routed_attention(q, k, v, r_idx, scale=16 ** -0.5, backend='reference'))


def test_reads_strided_views():
    qkv = torch.randn(2, 2, 5, 4, 3, 16).unbind(-2)
    r_idx = torch.rand(2, 5, 5).topk(2, dim=-1).indices
    ref = routed_attention(*(t.contiguous() for t in qkv), r_idx, backend='reference')
    assert_close('out', ref, routed_attention(*qkv, r_idx, backend='torch'), 1e-5)


def _valid_args():
    q, k, v, r_idx, r_weight = make_inputs(requires_grad=False, soft=True)
    return dict(query=q, key=k, value=v, r_idx=r_idx, r_weight=r_weight)


ERRORS = [
    (lambda a: a.update(query=a['query'].numpy()), TypeError, 'query must be a torch.Tensor'),
    (lambda a: a.update(query=a['query'].int()), TypeError, 'query must have dtype'),
    (lambda a: a.update(query=a['query'][0]), ValueError, 'query must have 5 dimensions'),
    (lambda a: a.update(key=a['key'].double()), ValueError, 'key must have the same dtype'),
    (lambda a: a.update(key=a['key'][:1]), ValueError, 'key must have the batch and heads'),
    (lambda a: a.update(value=a['value'][:, :1]), ValueError, 'value must have the batch and heads'),
    (lambda a: a.update(key=a['key'][..., :8]), ValueError, 'key must have the head_dim of query'),
    (lambda a: a.update(value=a['value'][:, :, :6]), ValueError, 'value must have the regions and region size'),
    (lambda a: a.update(value=a['value'][:, :, :, :5]), ValueError, 'value must have the regions and region size'),
    (lambda a: a.update(query=a['query'][:, :, :, :0]), ValueError, 'no empty dimension'),
    (lambda a: a.update(r_idx=a['r_idx'].float()), TypeError, 'r_idx must have dtype'),
    (lambda a: a.update(r_idx=a['r_idx'] > 0), TypeError, 'r_idx must have dtype'),
    (lambda a: a.update(r_idx=a['r_idx'][0]), ValueError, r'r_idx must have shape \[B, nR, topk\] or'),
    (lambda a: a.update(r_idx=a['r_idx'][:, :4], r_weight=None), ValueError, r'r_idx must have shape \[B, nR, topk\]'),
    (lambda a: a.update(r_idx=a['r_idx'][:, None].expand(2, 3, 5, 3), r_weight=None), ValueError,
     r'r_idx must have shape \[B, H, nR, topk\]'),
    (lambda a: a.update(r_idx=a['r_idx'][..., :0], r_weight=None), ValueError, 'topk <= nRk'),
    (lambda a: a.update(r_idx=torch.zeros(2, 5, 8, dtype=torch.long), r_weight=None), ValueError, 'topk <= nRk'),
    (lambda a: a.update(r_idx=a['r_idx'] + 7), ValueError, r'r_idx values must be in \[0, nRk\) = \[0, 7\)'),
    (lambda a: a.update(r_idx=a['r_idx'] - 1), ValueError, r'r_idx values must be in \[0, nRk\)'),
    (lambda a: a.update(r_weight=a['r_weight'][..., :2]), ValueError, 'r_weight must have the shape of r_idx'),
    (lambda a: a.update(r_weight=a['r_weight'].long()), TypeError, 'r_weight must have dtype'),
    (lambda a: a.update(r_weight=[1.0]), TypeError, 'r_weight must be a torch.Tensor'),
    (lambda a: a.update(scale=0.0), ValueError, 'scale must be a positive finite float'),
    (lambda a: a.update(scale=float('inf')), ValueError, 'scale must be a positive finite float, got inf'),
    (lambda a: a.update(scale=float('nan')), ValueError, 'scale must be a positive finite float, got nan'),
    (lambda a: a.update(scale='1'), TypeError, 'scale must be a float'),
    (lambda a: a.update(return_lse=1), TypeError, 'return_lse must be a bool'),
    (lambda a: a.update(check_indices='no'), TypeError, 'check_indices must be a bool'),
    (lambda a: a.update(backend='cuda'), ValueError, 'backend must be one of'),
]


@pytest.mark.parametrize(('edit', 'error', 'match'), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_name_the_argument(edit, error, match):
    args = _valid_args()
    edit(args)
    with pytest.raises(error, match=match):
        routed_attention(**args)


def test_check_indices_false_skips_only_the_range_check(monkeypatch):
    """The range check is the one host read of the call (a device sync on CUDA); check_indices=False leaves it out
    and nothing else: the output is the same, and the shape checks still run."""
    q, k, v, r_idx, _ = make_inputs(requires_grad=False)
    expected = routed_attention(q, k, v, r_idx, backend='torch')
    reads = []
    real_aminmax = torch.aminmax
    monkeypatch.setattr(torch, 'aminmax', lambda t: reads.append(t) or real_aminmax(t))
    routed_attention(q, k, v, r_idx, backend='torch')
    assert len(reads) == 1
    out = routed_attention(q, k, v, r_idx, backend='torch', check_indices=False)
    assert len(reads) == 1
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match='r_idx must have shape'):
        routed_attention(q, k, v, r_idx[:, :1], check_indices=False)


def test_arguments_after_r_idx_are_keyword_only():
    q, k, v, r_idx, _ = make_inputs(requires_grad=False)
    with pytest.raises(TypeError, match='positional arguments'):
        routed_attention(q, k, v, r_idx, 0.5)


def test_other_device_is_rejected():
    q, k, v, r_idx, _ = make_inputs(requires_grad=False)
    with pytest.raises(ValueError, match='r_idx must have the same device'):
        routed_attention(q, k, v, r_idx.to('meta'))


def test_backend_selection(monkeypatch):
    from zoo_kernels.routing import reference, torch_impl

    q, k, v, r_idx, _ = make_inputs(requires_grad=False)
    calls = []
    monkeypatch.setattr(reference, 'bra_reference', lambda *a: calls.append('reference') or (q, q[..., 0]))
    monkeypatch.setattr(torch_impl, 'bra_torch', lambda *a: calls.append('torch') or (q, q[..., 0]))
    monkeypatch.setenv('ZOO_BRA_BACKEND', 'reference')
    routed_attention(q, k, v, r_idx)
    routed_attention(q, k, v, r_idx, backend='torch')
    assert calls == ['reference', 'torch']
    monkeypatch.setenv('ZOO_BRA_BACKEND', 'nope')
    with pytest.raises(ValueError, match='ZOO_BRA_BACKEND'):
        routed_attention(q, k, v, r_idx)
    # automatic on CPU: the torch backend (the interpreter is never chosen automatically)
    monkeypatch.delenv('ZOO_BRA_BACKEND')
    routed_attention(q, k, v, r_idx)
    assert calls[-1] == 'torch'
    with pytest.raises(ValueError, match="backend='triton' cannot run this call: triton supports float16"):
        routed_attention(*(t.double().to(TRITON_DEVICE) for t in (q, k, v)), r_idx.to(TRITON_DEVICE), backend='triton')


def test_transforms_take_the_torch_backend(monkeypatch):
    """Under ``torch.func`` transforms Triton is no candidate (its ops have no vmap rule), even where it could run:
    the automatic choice is the torch backend and an explicit 'triton' is refused by name."""
    from torch.func import vmap

    from zoo_kernels._utils import backend
    from zoo_kernels.routing import torch_impl

    monkeypatch.setattr(backend, 'triton_unsupported_reason', lambda t: None)  # as if on a GPU
    monkeypatch.setattr(backend, 'triton_interpreting', lambda: False)
    q, k, v, r_idx, _ = make_inputs(requires_grad=False)
    assert backend.triton_kernel_unsupported_reason(q, v) is None
    calls = []
    bra_torch = torch_impl.bra_torch
    monkeypatch.setattr(torch_impl, 'bra_torch', lambda *a: calls.append('torch') or bra_torch(*a))
    def one(*tensors, **kwargs):  # one batch element, as a batch of one
        return routed_attention(*(t.unsqueeze(0) for t in tensors), **kwargs)

    vmap(one)(q, k, v, r_idx)
    assert calls == ['torch']
    with pytest.raises(ValueError, match="backend='triton' cannot run this call: torch.func transforms"):
        vmap(functools.partial(one, backend='triton'))(q, k, v, r_idx)
