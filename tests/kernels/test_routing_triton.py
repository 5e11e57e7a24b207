"""The fused Triton backend of bi-level routing attention against the reference.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by ``conftest.py``): shapes stay
tiny; bf16 operands are upcast before ``tl.dot`` there (the interpreter's bf16 ``tl.dot`` is wrong), after the same
rounding to bf16 as on a GPU. Every case goes through the public API and compares the output, the log-sum-exp and
the gradients of q, k, v and r_weight with the reference run in fp64 on the same values, row by row, with every
allocation of the kernels' outputs poisoned with NaNs, on CUDA as on CPU. Compiling every kernel for sm80 and sm90
without a GPU is ``test_build_matrix.py``.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from kernel_helpers import TF32_APIS, TOLERANCES, TRITON_DEVICE, assert_close, tf32_allowed_through
from test_routing import check_backend, make_inputs

from zoo_kernels import routed_attention
from zoo_kernels._utils.backend import triton_interpreting
from zoo_kernels.routing.triton_impl import bra_block_config, bra_triton, routing_csr

pytestmark = pytest.mark.triton

DEVICE = TRITON_DEVICE
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def inputs(**kwargs):
    q, k, v, r_idx, r_weight = make_inputs(**kwargs)
    move = (lambda t: t.detach().to(DEVICE).requires_grad_(t.requires_grad)) if DEVICE != 'cpu' else (lambda t: t)
    return move(q), move(k), move(v), r_idx.to(DEVICE), move(r_weight) if r_weight is not None else None


CASES = [
    # make_inputs kwargs; the comment says which tiling the case exercises
    # packed queries (4 regions of 4 per program) and packed keys, 5 query / 7 key regions, shared routing
    pytest.param(dict(batch=1, heads=2, m=4, mk=4, topk=3), id='M4-Mk4-topk3-shared'),
    # packed, per-head routing, soft, every key region routed (topk = nRk), head dims padded (24 -> 32), Dv != D
    pytest.param(dict(batch=1, heads=2, m=4, mk=6, topk=7, per_head=True, soft=True, dim=24, dim_v=16),
                 id='M4-Mk6-topk7-per-head-soft-D24-Dv16'),
    # packing of regions that are not powers of two: 2 regions of 7 tokens in a 16-row tile
    pytest.param(dict(batch=1, heads=1, m=7, mk=5, topk=1, soft=True), id='M7-Mk5-topk1-soft'),
    # one region per program on both sides, 16 tokens
    pytest.param(dict(batch=1, heads=1, n_q=3, n_k=4, m=16, mk=16, topk=2, dim=32, soft=True, per_head=True),
                 id='M16-Mk16-topk2-per-head-soft'),
    # M != Mk across the packing threshold: queries tiled, keys packed (dK/dV) and the reverse
    pytest.param(dict(batch=1, heads=1, n_q=3, n_k=4, m=16, mk=4, topk=3, dim=16), id='M16-Mk4'),
    pytest.param(dict(batch=1, heads=1, n_q=3, n_k=4, m=4, mk=20, topk=2, dim=16, soft=True), id='M4-Mk20-soft'),
]


@pytest.mark.parametrize('kwargs', CASES)
def test_triton_matches_reference(kwargs, nan_poisoning):
    check_backend('triton', *inputs(**kwargs), scale=0.3)


@pytest.mark.parametrize(('m', 'per_head'), [(4, False), (4, True), (16, True)], ids=['packed-shared',
                                                                               'packed-per-head', 'tiled-per-head'])
def test_triton_skewed_routing_over_batches(m, per_head, nan_poisoning):
    # most query regions route to key region 2: in-degrees 0 to 5, inverse lists of several batches (and heads)
    # packed into one program, taken by decreasing in-degree
    q, k, v, r_idx, r_weight = inputs(batch=2, heads=2, n_q=5, n_k=7, m=m, mk=m, topk=2, per_head=per_head, soft=True)
    r_idx = r_idx.clone()
    r_idx[..., 0] = torch.where(r_idx[..., 1] == 2, 4, 2)
    check_backend('triton', q, k, v, r_idx, r_weight, scale=0.3)


def test_work_order_is_list_major_by_decreasing_degree():
    from zoo_kernels.routing.triton_impl import work_order

    r_idx = torch.tensor([[[2, 0], [2, 1], [0, 2]], [[1, 2], [1, 0], [0, 1]]])
    offsets, _ = routing_csr(r_idx, 3)
    # degrees: list 0 -> (2, 1, 3), list 1 -> (2, 3, 1)
    assert work_order(offsets, 3).tolist() == [2, 0, 1, 4, 3, 5]


def test_triton_multiple_tiles_per_region(nan_poisoning):
    # 70 query tokens = two 64-row tiles (the soft-routing gradient is summed over them), 70 key tokens = two
    # streamed tiles per routed region, D 16
    check_backend('triton', *inputs(batch=1, heads=1, n_q=2, n_k=3, m=70, mk=70, topk=2, soft=True), scale=0.3)


def test_triton_gradient_without_lse(nan_poisoning):
    check_backend('triton', *inputs(batch=1, heads=2, m=4, mk=4, soft=True), lse_grad=False)


def test_triton_float16(nan_poisoning):
    check_backend('triton', *inputs(batch=1, heads=2, n_q=3, n_k=4, m=16, mk=4, topk=2, dim=32,
                                    dtype=torch.float16))


def test_triton_duplicate_indices_count_twice(nan_poisoning):
    q, k, v, _, _ = inputs(batch=1, heads=1, n_q=2)
    r_idx = torch.tensor([[[3, 3, 1], [0, 5, 0]]], device=DEVICE)
    r_weight = torch.rand(1, 2, 3, device=DEVICE, requires_grad=True)
    check_backend('triton', q, k, v, r_idx, r_weight)


def test_triton_atomic_backward(monkeypatch, nan_poisoning):
    # the opt-in of the public API: ZOO_BRA_ATOMIC_BWD=1 while deterministic algorithms are off
    from zoo_kernels.routing import triton_impl

    chosen = []
    real = triton_impl.bra_bwd

    def spy(*args):
        chosen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(triton_impl, 'bra_bwd', spy)
    monkeypatch.setenv('ZOO_BRA_ATOMIC_BWD', '1')
    check_backend('triton', *inputs(batch=1, heads=2, m=4, mk=6, per_head=True, soft=True), scale=0.3)
    check_backend('triton', *inputs(batch=1, heads=1, n_q=3, n_k=4, m=16, mk=16, topk=2, soft=True))
    assert chosen == [False, False]
    torch.use_deterministic_algorithms(True)
    try:
        check_backend('triton', *inputs(batch=1, heads=1, m=4, mk=4))
    finally:
        torch.use_deterministic_algorithms(False)
    assert chosen[-1] is True


def test_triton_backward_is_bitwise_deterministic():
    q, k, v, r_idx, r_weight = inputs(batch=1, heads=2, m=4, mk=4, topk=3, soft=True)
    grads = []
    for _ in range(2):
        out = bra_triton(q, k, v, r_idx, r_weight, 0.25)[0]
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v, r_weight)))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_triton_reads_strided_views(nan_poisoning):
    qkv = torch.randn(1, 2, 5, 4, 3, 16, device=DEVICE, requires_grad=True)
    ref_qkv = qkv.detach().double().requires_grad_()
    r_idx = torch.rand(1, 5, 5).topk(2, dim=-1).indices.to(DEVICE)
    out = routed_attention(*qkv.unbind(-2), r_idx, backend='triton')
    ref = routed_attention(*ref_qkv.unbind(-2), r_idx, backend='reference')
    assert_close('out', ref, out, TOLERANCES[torch.float32][0])
    grad = torch.randn_like(ref)
    out.backward(grad.float())
    ref.backward(grad)
    assert_close('dqkv', ref_qkv.grad, qkv.grad, TOLERANCES[torch.float32][1])


def test_routing_csr_lists_every_pair_in_order():
    r_idx = torch.tensor([[[2, 0], [2, 1], [0, 2]], [[1, 1], [1, 0], [0, 1]]])
    offsets, pairs = routing_csr(r_idx, 3)
    assert offsets.dtype == pairs.dtype == torch.int32
    for b in range(2):
        for kr in range(3):
            got = pairs[offsets[b * 3 + kr]:offsets[b * 3 + kr + 1]].tolist()
            want = [r * 2 + t for r in range(3) for t in range(2) if r_idx[b, r, t] == kr]
            assert got == want


def test_block_config_packs_small_regions():
    cfg = bra_block_config(4, 4, 32, 32)
    assert cfg['fwd']['pack'] and cfg['fwd']['g'] == 4 and cfg['fwd']['bm'] == 16 and cfg['fwd']['bn'] == 16
    cfg = bra_block_config(256, 256, 32, 32)
    assert not cfg['fwd']['pack'] and cfg['fwd']['nmt'] == 4 and cfg['dkv']['nqc'] == 4
    assert bra_block_config(64, 64, 128, 128, 4)['fwd']['bm'] == 16


class _Block(torch.nn.Module):
    def forward(self, q, k, v, r_idx, r_weight):
        return routed_attention(q, k, v, r_idx, r_weight=r_weight, backend='triton') * 2


def test_triton_compiles_without_graph_breaks():
    torch._dynamo.reset()
    block = torch.compile(_Block(), fullgraph=True, backend='aot_eager' if triton_interpreting() else 'inductor')
    q, k, v, r_idx, r_weight = inputs(batch=1, heads=1, m=4, mk=4, topk=2, soft=True)
    out = block(q, k, v, r_idx, r_weight)
    out.sum().backward()
    ref_q, ref_w = q.detach().double().requires_grad_(), r_weight.detach().double().requires_grad_()
    ref = routed_attention(ref_q, k.detach().double(), v.detach().double(), r_idx, r_weight=ref_w,
                           backend='reference') * 2
    ref.sum().backward()
    assert_close('out', ref, out, TOLERANCES[torch.float32][0])
    assert_close('dq', ref_q.grad, q.grad, TOLERANCES[torch.float32][1])
    assert_close('dw', ref_w.grad, r_weight.grad, TOLERANCES[torch.float32][1])
    torch._dynamo.reset()


@pytest.mark.parametrize('api', TF32_APIS)
def test_triton_float32_with_tf32_allowed_through_any_api(api, nan_poisoning):
    from zoo_kernels._utils.triton_launch import dot_precision

    q, k, v, r_idx, r_weight = inputs(batch=1, heads=2, m=4, mk=4, topk=2, soft=True)
    with tf32_allowed_through(api):
        assert dot_precision(q) == 'tf32'
        check_backend('triton', q, k, v, r_idx, r_weight, scale=0.3)


def test_triton_bfloat16(nan_poisoning):
    check_backend('triton', *inputs(batch=1, heads=2, n_q=3, n_k=4, m=16, mk=4, topk=2, dim=32, soft=True,
                                    dtype=torch.bfloat16))


@needs_cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32], ids=['fp16', 'bf16', 'fp32'])
@pytest.mark.parametrize('dim', [16, 32, 64, 128])
@pytest.mark.parametrize('m', [4, 16, 64])
def test_triton_head_dims_and_tilings_on_cuda(dtype, dim, m, nan_poisoning):
    check_backend('triton', *inputs(batch=8, heads=2, n_q=49, n_k=49, m=m, mk=m, topk=4, dim=dim, soft=True,
                                    dtype=dtype))


@needs_cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
@pytest.mark.parametrize(('n_win', 'm', 'topk', 'heads'), [(7, 64, 1, 3), (7, 16, 4, 6), (7, 4, 16, 12),
                                                             (8, 256, 1, 2), (8, 64, 4, 4), (8, 16, 16, 8)])
def test_triton_biformer_stages_on_cuda(dtype, n_win, m, topk, heads, nan_poisoning):
    check_backend('triton', *inputs(batch=8, heads=heads, n_q=n_win ** 2, n_k=n_win ** 2, m=m, mk=m, topk=topk,
                                    dim=32, dtype=dtype), scale=(32 * heads) ** -0.5)


@needs_cuda
@pytest.mark.parametrize('api', (None,) + TF32_APIS)
def test_triton_float32_on_cuda(api, nan_poisoning):
    q, k, v, r_idx, r_weight = inputs(batch=8, heads=3, n_q=49, n_k=49, m=16, mk=16, topk=4, dim=32, soft=True)
    with tf32_allowed_through(api) if api else contextlib.nullcontext():
        check_backend('triton', q, k, v, r_idx, r_weight)


@needs_cuda
def test_triton_new_resolution_reuses_the_compiled_kernels(nan_poisoning):
    from zoo_kernels.routing import triton_kernels as tk

    def cached():
        device = torch.cuda.current_device()
        return sum(len(fn.device_caches[device][0])
                   for fn in (tk.bra_fwd_kernel, tk.bra_bwd_kernel_dq, tk.bra_bwd_kernel_dkv))

    def step(batch, heads, n_win):
        q, k, v, r_idx, _ = inputs(batch=batch, heads=heads, n_q=n_win ** 2, n_k=n_win ** 2, m=16, mk=16, topk=4,
                                   dim=32, dtype=torch.float16)
        routed_attention(q, k, v, r_idx, backend='triton').float().sum().backward()

    step(1, 2, 7)
    before = cached()
    for batch, heads, n_win in ((2, 3, 8), (3, 2, 13)):
        step(batch, heads, n_win)
    assert cached() == before


@needs_cuda
def test_triton_backward_is_deterministic_on_cuda(nan_poisoning):
    # all 49 query regions of a batch route to 4 key regions: long inverse lists
    q, k, v, _, r_weight = inputs(batch=4, heads=4, n_q=49, n_k=49, m=16, mk=16, topk=4, dim=32, soft=True,
                                  dtype=torch.float16)
    r_idx = torch.arange(4, device=DEVICE).expand(4, 49, 4).contiguous()
    grads = []
    for _ in range(2):
        out = routed_attention(q, k, v, r_idx, r_weight=r_weight, backend='triton')
        grads.append(torch.autograd.grad(out.float().square().sum(), (q, k, v, r_weight)))
    for a, b in zip(*grads):
        assert torch.equal(a, b)

