"""The fused Triton backend of neighborhood attention against the reference.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by ``conftest.py``): maps stay
small (the interpreter costs about a second per call); bf16 operands are upcast before ``tl.dot`` there (the
interpreter's bf16 ``tl.dot`` is wrong), after the same rounding to bf16 as on a GPU. Every case goes through the
public API and compares the output, the log-sum-exp and the gradients of q, k, v and rpb with the reference run in
fp64 on the same values, row by row (one query and head, or one key and head: ``kernel_helpers.row_errors``), with
every allocation of the kernels' outputs poisoned with NaNs, on CUDA as on CPU. Compiling every kernel for sm80 and
sm90 without a GPU is ``test_build_matrix.py``.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from kernel_helpers import (
    ROW_TOLERANCES,
    TF32_APIS,
    TOLERANCES,
    TRITON_DEVICE,
    assert_close,
    assert_rows_close,
    tf32_allowed_through,
)

from zoo_kernels import na2d
from zoo_kernels._utils.backend import triton_interpreting
from zoo_kernels.neighborhood import neighborhood_attention

pytestmark = pytest.mark.triton

DEVICE = TRITON_DEVICE
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def make_inputs(batch, spatial, heads, dim, *, heads_kv=None, dim_v=None, rpb_kernel=None, dtype=torch.float32):
    heads_kv = heads_kv or heads
    q = torch.randn(batch, *spatial, heads, dim, dtype=dtype, device=DEVICE, requires_grad=True)
    k = torch.randn(batch, *spatial, heads_kv, dim, dtype=dtype, device=DEVICE, requires_grad=True)
    v = torch.randn(batch, *spatial, heads_kv, dim_v or dim, dtype=dtype, device=DEVICE, requires_grad=True)
    rpb = None
    if rpb_kernel is not None:
        rpb = torch.randn(heads, *(2 * x - 1 for x in rpb_kernel), device=DEVICE, requires_grad=True)
    return q, k, v, rpb


def _tf32() -> bool:
    from zoo_kernels._utils.triton_launch import tf32_allowed
    return tf32_allowed()


def check_against_reference(q, k, v, rpb, kernel_size, dilation=1, stride=1, is_causal=False, *, backward=True,
                            lse_grad=True, scale=0.3):
    """Triton and the fp64 reference on the same values: out, lse and every gradient, row by row."""
    fwd_tol, grad_tol = ROW_TOLERANCES['tf32' if q.dtype == torch.float32 and _tf32() else q.dtype]
    args = dict(kernel_size=kernel_size, dilation=dilation, is_causal=is_causal, stride=stride, scale=scale,
                return_lse=True)
    leaves = [t for t in (q, k, v, rpb) if t is not None]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_rpb = ref_leaves[3] if rpb is not None else None
    ref_out, ref_lse = neighborhood_attention(*ref_leaves[:3], rpb=ref_rpb, backend='reference', **args)
    out, lse = neighborhood_attention(q, k, v, rpb=rpb, backend='triton', **args)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert out.shape == ref_out.shape and lse.shape == ref_lse.shape
    assert_rows_close('out', ref_out, out, fwd_tol)
    assert_rows_close('lse', ref_lse, lse, fwd_tol, vector_dim=False)
    if not backward:
        return
    grad_out = torch.randn_like(ref_out)
    grad_lse = torch.randn_like(ref_lse) if lse_grad else torch.zeros_like(ref_lse)
    ref_grads = torch.autograd.grad((ref_out * grad_out).sum() + (ref_lse * grad_lse).sum(), ref_leaves)
    loss = (out.double() * grad_out).sum()
    if lse_grad:
        loss = loss + (lse.double() * grad_lse).sum()
    grads = torch.autograd.grad(loss, leaves)
    for name, ref_grad, grad, leaf in zip(('dq', 'dk', 'dv', 'drpb'), ref_grads, grads, leaves):
        assert grad.dtype == leaf.dtype, f'{name} has dtype {grad.dtype}, its input {leaf.dtype}'
        assert_rows_close(name, ref_grad, grad, max(grad_tol, ROW_TOLERANCES[leaf.dtype][1]))


CASES = [
    # (batch, spatial, heads, heads_kv, dim, dim_v), kernel_size, dilation, stride, is_causal, use_rpb
    pytest.param((2, (37,), 2, 2, 16, 16), (5,), (3,), (1,), (False,), True, id='1d-L37-k5-d3-rpb'),
    pytest.param((1, (37,), 2, 1, 16, 16), (5,), (3,), (2,), (True,), False, id='1d-L37-k5-d3-s2-causal-gqa'),
    pytest.param((1, (150,), 2, 1, 16, 16), (9,), (2,), (1,), (False,), True, id='1d-L150-k9-d2-rpb-gqa'),
    pytest.param((1, (9, 13), 2, 2, 16, 16), (3, 3), (2, 2), (1, 1), (False, False), False, id='2d-9x13-k3-d2'),
    pytest.param((2, (7, 7), 1, 1, 16, 16), (7, 7), (1, 1), (1, 1), (False, False), False, id='2d-7x7-k7-full'),
    pytest.param((1, (13, 10), 2, 2, 32, 32), (5, 3), (2, 3), (1, 1), (False, False), True,
                 id='2d-13x10-k5x3-d2x3-rpb'),
    pytest.param((1, (9, 11), 1, 1, 16, 16), (4, 4), (1, 2), (1, 1), (False, False), False, id='2d-9x11-k4-even'),
    pytest.param((1, (11, 12), 1, 1, 16, 16), (5, 3), (1, 1), (2, 3), (False, False), False, id='2d-11x12-s2x3'),
    pytest.param((1, (12, 11), 1, 1, 16, 16), (3, 4), (2, 1), (1, 2), (True, False), False,
                 id='2d-12x11-causal0-d2-s2'),
    pytest.param((1, (8, 9), 4, 2, 16, 16), (3, 3), (1, 1), (1, 1), (False, False), False, id='2d-8x9-gqa-4to2'),
    pytest.param((1, (8, 9), 2, 2, 16, 32), (3, 3), (1, 2), (1, 1), (False, False), False, id='2d-8x9-dv32'),
    pytest.param((1, (8, 9), 1, 1, 8, 8), (3, 3), (1, 1), (1, 1), (False, False), False, id='2d-8x9-d8'),
    pytest.param((1, (8, 9), 1, 1, 60, 24), (5, 3), (1, 1), (1, 1), (False, False), False, id='2d-8x9-d60-dv24'),
    pytest.param((1, (5, 6, 7), 1, 1, 16, 16), (3, 3, 3), (1, 2, 1), (1, 1, 1), (False, False, False), True,
                 id='3d-5x6x7-k3-d1x2x1-rpb'),
    pytest.param((1, (5, 6, 7), 2, 1, 16, 16), (3, 2, 3), (1, 1, 2), (2, 1, 1), (False, True, False), False,
                 id='3d-5x6x7-mixed-causal-gqa'),
]


@pytest.mark.parametrize(('shape', 'kernel', 'dilation', 'stride', 'causal', 'use_rpb'), CASES)
def test_triton_matches_reference(shape, kernel, dilation, stride, causal, use_rpb, nan_poisoning):
    batch, spatial, heads, heads_kv, dim, dim_v = shape
    q, k, v, rpb = make_inputs(batch, spatial, heads, dim, heads_kv=heads_kv, dim_v=dim_v,
                               rpb_kernel=kernel if use_rpb else None)
    check_against_reference(q, k, v, rpb, kernel, dilation, stride, causal)


def test_triton_gradient_without_lse(nan_poisoning):
    q, k, v, rpb = make_inputs(1, (9, 8), 2, 16, rpb_kernel=(3, 3))
    check_against_reference(q, k, v, rpb, 3, 2, lse_grad=False)


def test_triton_bias_without_gradient_and_other_dtype(nan_poisoning):
    q, k, v, _ = make_inputs(1, (7, 9), 2, 16)
    rpb = torch.randn(2, 5, 5, dtype=torch.float64, device=DEVICE)
    out = na2d(q, k, v, 3, rpb=rpb, backend='triton')
    ref = na2d(q, k, v, 3, rpb=rpb, backend='reference')
    assert_close('out', ref, out, TOLERANCES[torch.float32][0])
    out.sum().backward()
    assert rpb.grad is None and q.grad is not None


def test_triton_float16(nan_poisoning):
    q, k, v, _ = make_inputs(1, (9, 10), 2, 32, dtype=torch.float16)
    check_against_reference(q, k, v, None, 3, (1, 2))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
def test_triton_16bit_with_the_bias_gradient(dtype, nan_poisoning):
    # what NAT trains with under autocast: 16-bit q, k, v, an fp32 bias and its gradient
    q, k, v, rpb = make_inputs(1, (9, 10), 2, 32, heads_kv=1, rpb_kernel=(5, 5), dtype=dtype)
    check_against_reference(q, k, v, rpb, 5, (1, 2))


@pytest.mark.parametrize('api', TF32_APIS)
def test_triton_float32_with_tf32_allowed_through_any_api(api, nan_poisoning):
    # torch raises "mix of the legacy and new APIs" on reading the legacy flag after the new API set TF32: the
    # launcher reads the new API only, which reflects all four ways
    from zoo_kernels._utils.triton_launch import dot_precision

    q, k, v, rpb = make_inputs(1, (7, 8), 2, 16, rpb_kernel=(3, 3))
    assert dot_precision(q) == 'tf32x3'
    with tf32_allowed_through(api):
        assert dot_precision(q) == 'tf32'
        check_against_reference(q, k, v, rpb, 3, 2)
    assert dot_precision(q) == 'tf32x3'


@pytest.mark.parametrize(('arch', 'head_dim', 'spatial', 'kernel'), [
    pytest.param(90, 128, (9, 10), (5, 3), id='sm90-d128-2d'),
    pytest.param(90, 128, (5, 6, 7), (3, 3, 3), id='sm90-d128-3d'),
    pytest.param(80, 64, (40,), (7,), id='sm80-d64-1d'),
])
def test_triton_plans_of_each_architecture(arch, head_dim, spatial, kernel, monkeypatch, nan_poisoning):
    # the interpreter takes the sm80 plans (arch 0); the sm90 plans of head dim 128 have 32-row tiles
    from zoo_kernels.neighborhood import triton_impl

    monkeypatch.setattr(triton_impl, '_arch', lambda t: arch)
    q, k, v, rpb = make_inputs(1, spatial, 2, head_dim, heads_kv=1, rpb_kernel=kernel, dtype=torch.float16)
    check_against_reference(q, k, v, rpb, kernel, 1)


def test_block_config_has_a_plan_for_every_dtype_head_dim_and_architecture():
    from zoo_kernels.neighborhood.triton_impl import na_block_config

    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for head_dim in (8, 16, 24, 32, 64, 100, 128):
            for arch in (0, 80, 86, 89, 90, 100, 120):
                for rank in (1, 2, 3):
                    cfg = na_block_config((7,) * rank, (1,) * rank, head_dim, head_dim, dtype, arch)
                    for name in ('fwd', 'dq', 'dkv'):
                        tile, sub = cfg[name]['tile'], cfg[name]['sub']
                        assert 16 <= tile[0] * tile[1] * tile[2] <= 64 and sub[0] * sub[1] * sub[2] <= 64
    # fp32 (three TF32 products on split operands) takes 16-row tiles and one stage everywhere
    cfg = na_block_config((7, 7), (1, 1), 32, 32, torch.float32, 90)
    assert cfg['fwd']['tile'] == (1, 4, 4) and cfg['dq']['num_stages'] == 1


@needs_cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
@pytest.mark.parametrize('head_dim', [16, 32, 64, 128])
def test_triton_16bit_on_cuda(dtype, head_dim, nan_poisoning):
    q, k, v, rpb = make_inputs(8, (28, 30), 4, head_dim, heads_kv=2, rpb_kernel=(7, 7), dtype=dtype)
    check_against_reference(q, k, v, rpb, 7, (2, 3))


@needs_cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
@pytest.mark.parametrize(('spatial', 'heads', 'dilation'), [((56, 56), 2, 1), ((28, 28), 4, 4), ((14, 14), 8, 2),
                                                             ((7, 7), 16, 1)], ids=['s1', 's2-d4', 's3-d2', 's4'])
def test_triton_nat_stages_on_cuda(dtype, spatial, heads, dilation, nan_poisoning):
    q, k, v, rpb = make_inputs(8, spatial, heads, 32, rpb_kernel=(7, 7), dtype=dtype)
    check_against_reference(q, k, v, rpb, 7, dilation, scale=32 ** -0.5)


@needs_cuda
@pytest.mark.parametrize('api', (None,) + TF32_APIS)
@pytest.mark.parametrize('head_dim', [32, 128])
def test_triton_float32_on_cuda(api, head_dim, nan_poisoning):
    q, k, v, rpb = make_inputs(4, (20, 22), 4, head_dim, heads_kv=2, rpb_kernel=(7, 7))
    with tf32_allowed_through(api) if api else contextlib.nullcontext():
        check_against_reference(q, k, v, rpb, 7, (2, 1))


def test_triton_reads_a_packed_qkv_in_place(nan_poisoning):
    qkv = torch.randn(1, 9, 10, 3, 2, 16, device=DEVICE, requires_grad=True)
    ref_qkv = qkv.detach().double().requires_grad_()
    out = na2d(*qkv.unbind(3), 3, dilation=(2, 1), backend='triton')
    ref = na2d(*ref_qkv.unbind(3), 3, dilation=(2, 1), backend='reference')
    assert_close('out', ref, out, TOLERANCES[torch.float32][0])
    grad = torch.randn_like(ref)
    out.backward(grad.float())
    ref.backward(grad)
    assert_close('dqkv', ref_qkv.grad, qkv.grad, TOLERANCES[torch.float32][1])


def test_triton_copies_a_head_dim_that_is_not_contiguous(nan_poisoning):
    q, k, v, _ = make_inputs(1, (6, 7), 2, 16)
    q_t = q.detach().transpose(-1, -2).contiguous().transpose(-1, -2)
    assert q_t.stride(-1) != 1
    out = na2d(q_t, k, v, 3, backend='triton')
    assert_close('out', na2d(q, k, v, 3, backend='reference'), out, TOLERANCES[torch.float32][0])


class _Block(torch.nn.Module):
    def forward(self, q, k, v):
        return na2d(q, k, v, 3, dilation=(1, 2), backend='triton') * 2


def test_triton_compiles_without_graph_breaks_and_new_resolutions():
    torch._dynamo.reset()
    block = torch.compile(_Block(), fullgraph=True, backend='aot_eager' if triton_interpreting() else 'inductor')
    for spatial in ((6, 7), (8, 9)):
        q, k, v, _ = make_inputs(1, spatial, 1, 16)
        out = block(q, k, v)
        out.sum().backward()
        ref_q = q.detach().double().requires_grad_()
        ref = na2d(ref_q, k.detach().double(), v.detach().double(), 3, dilation=(1, 2), backend='reference') * 2
        ref.sum().backward()
        assert_close('out', ref, out, TOLERANCES[torch.float32][0])
        assert_close('dq', ref_q.grad, q.grad, TOLERANCES[torch.float32][1])
    torch._dynamo.reset()


@needs_cuda
def test_triton_new_resolution_reuses_the_compiled_kernels(nan_poisoning):
    from zoo_kernels.neighborhood import triton_kernels as tk

    def cached():
        device = torch.cuda.current_device()
        return sum(len(fn.device_caches[device][0])
                   for fn in (tk.na_fwd_kernel, tk.na_bwd_kernel_dq, tk.na_bwd_kernel_dkv))

    def step(batch, spatial):
        q, k, v, _ = make_inputs(batch, spatial, 2, 32, dtype=torch.float16)
        na2d(q, k, v, 5, dilation=2, backend='triton').sum().backward()

    step(1, (24, 20))
    before = cached()
    for batch, spatial in ((2, (37, 41)), (3, (56, 56))):
        step(batch, spatial)
    assert cached() == before
@needs_cuda
def test_triton_backward_is_deterministic(nan_poisoning):
    q, k, v, rpb = make_inputs(2, (30, 28), 4, 32, heads_kv=2, rpb_kernel=(7, 7), dtype=torch.float16)
    grads = []
    for _ in range(2):
        out = na2d(q, k, v, 7, rpb=rpb, backend='triton')
        grads.append(torch.autograd.grad(out.float().square().sum(), (q, k, v, rpb)))
    for a, b in zip(*grads):
        assert torch.equal(a, b)

