"""The torch backend of neighborhood attention (tiled boxes + SDPA) against the reference.

Every case compares the output, the log-sum-exp and the gradients of q, k, v and rpb with ``na_reference`` run
in fp64 on the same values. Shapes are chosen to break the tiling: sizes not divisible by the tile or the
dilation, tiles forced smaller than the group, and one case per policy branch (plain attention, whole-group
windows without a mask, one dense masked attention per group, tiled boxes).
"""
from __future__ import annotations

import random

import pytest
import torch
from kernel_helpers import TOLERANCES, assert_close, sample_na_configs

from zoo_kernels import na2d
from zoo_kernels.neighborhood import torch_impl
from zoo_kernels.neighborhood.reference import na_reference
from zoo_kernels.neighborhood.torch_impl import choose_tile, na_torch


def make_inputs(batch, spatial, heads, dim, *, heads_kv=None, dim_v=None, rpb_kernel=None, dtype=torch.float32,
                rpb_dtype=None):
    heads_kv = heads_kv or heads
    q = torch.randn(batch, *spatial, heads, dim, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, *spatial, heads_kv, dim, dtype=dtype, requires_grad=True)
    v = torch.randn(batch, *spatial, heads_kv, dim_v or dim, dtype=dtype, requires_grad=True)
    rpb = None
    if rpb_kernel is not None:
        rpb_shape = (heads, *(2 * x - 1 for x in rpb_kernel))
        rpb = torch.randn(rpb_shape, dtype=rpb_dtype or dtype, requires_grad=True)
    return q, k, v, rpb


def check_against_reference(q, k, v, rpb, kernel, dilation, stride, causal, *, backward=True, scale=0.3):
    """Run both on the same values (reference in fp64) and compare out, lse and every gradient."""
    dtype = q.dtype
    fwd_tol, grad_tol = TOLERANCES[dtype]
    leaves = [t for t in (q, k, v, rpb) if t is not None]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_rpb = ref_leaves[3] if rpb is not None else None
    ref_out, ref_lse = na_reference(*ref_leaves[:3], kernel, dilation, stride, causal, ref_rpb, scale)
    out, lse = na_torch(q, k, v, kernel, dilation, stride, causal, rpb, scale, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close('out', ref_out, out, fwd_tol)
    assert_close('lse', ref_lse, lse, max(fwd_tol, 1e-6))
    if not backward:
        return
    grad_out = torch.randn_like(ref_out)
    grad_lse = torch.randn_like(ref_lse)
    ref_grads = torch.autograd.grad((ref_out * grad_out).sum() + (ref_lse * grad_lse).sum(), ref_leaves)
    grads = torch.autograd.grad((out.double() * grad_out).sum() + (lse.double() * grad_lse).sum(), leaves)
    for name, ref_grad, grad, leaf in zip(('dq', 'dk', 'dv', 'drpb'), ref_grads, grads, leaves):
        assert grad.dtype == leaf.dtype, f'{name} has dtype {grad.dtype}, its input {leaf.dtype}'
        # precision is bounded by the coarser of the inputs' and the leaf's own dtype (a bf16 rpb, fp32 inputs)
        assert_close(name, ref_grad, grad, max(grad_tol, TOLERANCES[leaf.dtype][1]))


def forced_tile(monkeypatch, tile):
    monkeypatch.setattr(torch_impl, 'choose_tile', lambda *args: tile)


def tile_kind(spatial, kernel, dilation, stride, causal=None, use_rpb=False):
    """Which policy branch a call takes: 'plain', 'groups' (whole-group windows, no mask), 'dense' or 'tiled'."""
    causal = causal or (False,) * len(spatial)
    tile = choose_tile(spatial, kernel, dilation, stride)
    plan = torch_impl._build_plan(spatial, kernel, dilation, stride, causal, tile, use_rpb, torch.float32, 'cpu')
    longest = tuple(-(-n // d) for n, d in zip(spatial, dilation))
    masked = plan.mask is not None or plan.bias_index is not None
    if plan.q_src is None and not masked:
        return 'plain'
    if tile == longest:
        return 'dense' if masked else 'groups'
    return 'tiled'


CASES = [
    # (batch, spatial, heads, heads_kv, dim, dim_v), kernel, dilation, stride, causal, use_rpb
    pytest.param((2, (37,), 2, 2, 8, 8), (5,), (1,), (1,), (False,), True, id='1d-L37-k5-rpb'),
    pytest.param((1, (40,), 2, 1, 8, 8), (7,), (3,), (1,), (True,), False, id='1d-L40-k7-d3-causal-gqa'),
    pytest.param((1, (203,), 2, 2, 8, 4), (9,), (1,), (2,), (False,), False, id='1d-L203-k9-s2-tiled-dv4'),
    pytest.param((2, (13, 10), 2, 2, 8, 8), (3, 3), (2, 3), (1, 1), (False, False), True, id='2d-13x10-d23-rpb'),
    pytest.param((1, (17, 15), 3, 3, 8, 8), (5, 5), (3, 3), (1, 1), (False, False), False, id='2d-17x15-k5-d3'),
    pytest.param((1, (9, 11), 2, 2, 8, 8), (4, 6), (1, 1), (1, 1), (False, False), False, id='2d-9x11-even-k46'),
    pytest.param((1, (13, 14), 2, 2, 8, 8), (5, 6), (1, 2), (2, 3), (False, False), False, id='2d-13x14-stride23'),
    pytest.param((1, (12, 11), 4, 2, 8, 8), (4, 3), (2, 1), (1, 2), (True, False), False,
                 id='2d-12x11-causal-x-d2-stride-gqa'),
    pytest.param((1, (10, 12), 2, 2, 8, 8), (3, 5), (3, 2), (1, 1), (False, True), False,
                 id='2d-10x12-causal-y-d32'),
    pytest.param((1, (27, 26), 4, 1, 8, 6), (3, 5), (1, 1), (1, 1), (False, False), True,
                 id='2d-27x26-tiled-rpb-mqa-dv6'),
    pytest.param((1, (25, 22), 2, 2, 8, 8), (5, 3), (1, 2), (1, 1), (True, True), False, id='2d-25x22-tiled-causal'),
    pytest.param((1, (28, 23), 2, 2, 8, 8), (7, 5), (1, 1), (7, 5), (False, True), False,
                 id='2d-28x23-blocked-stride-eq-kernel'),
    pytest.param((1, (7, 6, 9), 2, 2, 4, 4), (3, 3, 3), (2, 1, 3), (1, 2, 1), (False, True, False), False,
                 id='3d-7x6x9-d213-causal-stride'),
    pytest.param((1, (11, 10, 9), 2, 2, 4, 4), (3, 3, 3), (1, 1, 1), (1, 1, 1), (False, False, False), True,
                 id='3d-11x10x9-tiled-rpb'),
]


@pytest.mark.parametrize(('shape', 'kernel', 'dilation', 'stride', 'causal', 'use_rpb'), CASES)
def test_matches_reference(shape, kernel, dilation, stride, causal, use_rpb, nan_poisoning):
    batch, spatial, heads, heads_kv, dim, dim_v = shape
    q, k, v, rpb = make_inputs(batch, spatial, heads, dim, heads_kv=heads_kv, dim_v=dim_v,
                               rpb_kernel=kernel if use_rpb else None)
    check_against_reference(q, k, v, rpb, kernel, dilation, stride, causal)


def test_large_dilation_forward():
    q, k, v, _ = make_inputs(1, (30, 45), 2, 8)
    check_against_reference(q, k, v, None, (5, 7), (4, 6), (1, 1), (False, False), backward=False)


@pytest.mark.parametrize(('spatial', 'kernel', 'dilation', 'kind'), [
    pytest.param((7, 7), (7, 7), (1, 1), 'plain', id='plain-k-equals-size'),
    pytest.param((14, 12), (7, 6), (2, 2), 'groups', id='groups-whole-group-windows'),
    pytest.param((14, 14), (7, 7), (1, 1), 'dense', id='dense-14x14'),
    pytest.param((12, 11), (3, 3), (1, 1), 'dense', id='dense-12x11-k3'),
    pytest.param((28, 28), (7, 7), (1, 1), 'tiled', id='tiled-28x28'),
    pytest.param((30, 29), (5, 7), (1, 2), 'tiled', id='tiled-30x29-d2'),
])
def test_policy_branches(spatial, kernel, dilation, kind):
    stride = (1,) * len(spatial)
    assert tile_kind(spatial, kernel, dilation, stride) == kind
    q, k, v, rpb = make_inputs(1, spatial, 2, 8, rpb_kernel=kernel if kind == 'dense' else None)
    check_against_reference(q, k, v, rpb, kernel, dilation, stride, (False,) * len(spatial))


def test_rpb_turns_plain_into_masked():
    assert tile_kind((7, 7), (7, 7), (1, 1), (1, 1), use_rpb=True) == 'dense'
    q, k, v, rpb = make_inputs(1, (7, 7), 2, 8, rpb_kernel=(7, 7))
    check_against_reference(q, k, v, rpb, (7, 7), (1, 1), (1, 1), (False, False))


@pytest.mark.parametrize('rank', [1, 2, 3])
def test_random_sweep_with_forced_tiles(rank, monkeypatch):
    """Seeded valid configurations, each with a random tile per axis (from one slot to the whole group).

    Every other strided configuration draws tiles made of whole stride groups, which get the smaller box.
    """
    rng = random.Random(rank)
    strided = 0
    for cfg in sample_na_configs(10, rank, seed=100 + rank, max_size=12 if rank < 3 else 7):
        longest = tuple(-(-n // d) for n, d in zip(cfg['spatial'], cfg['dilation']))
        strided += any(s > 1 for s in cfg['stride'])
        if strided % 2:
            tile = tuple(s * rng.randint(1, m // s) for m, s in zip(longest, cfg['stride']))
        else:
            tile = tuple(rng.randint(1, m) for m in longest)
        forced_tile(monkeypatch, tile)
        heads_kv = rng.choice([1, 2])
        q, k, v, rpb = make_inputs(1, cfg['spatial'], 2, 4, heads_kv=heads_kv, dim_v=rng.choice([3, 4]),
                                   rpb_kernel=cfg['kernel_size'] if cfg['use_rpb'] else None)
        check_against_reference(q, k, v, rpb, cfg['kernel_size'], cfg['dilation'], cfg['stride'], cfg['is_causal'])


@pytest.mark.parametrize('layout', ['qkv-slices', 'channels-last'])
def test_strided_inputs(layout):
    batch, spatial, heads, dim = 2, (11, 9), 2, 8
    if layout == 'qkv-slices':
        qkv = torch.randn(batch, *spatial, 3, heads, dim, requires_grad=True)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    else:
        q, k, v = (torch.randn(batch, heads, dim, *spatial, requires_grad=True).permute(0, 3, 4, 1, 2)
                   for _ in range(3))
    assert not q.is_contiguous()
    check_against_reference(q, k, v, None, (3, 5), (2, 1), (1, 1), (False, False))


@pytest.mark.parametrize('tile', [(2, 3), (4, 5)], ids=['tiled', 'dense'])
def test_gradcheck_fp64(tile, monkeypatch):
    forced_tile(monkeypatch, tile)
    q, k, v, rpb = make_inputs(1, (5, 5), 2, 3, heads_kv=1, dim_v=2, rpb_kernel=(3, 3), dtype=torch.float64)

    def fn(q, k, v, rpb):
        # the lse is fp32 by contract: too coarse for finite differences, its gradients are checked elsewhere
        return na_torch(q, k, v, (3, 3), (1, 1), (1, 1), (False, False), rpb, 0.5)[0]

    assert torch.autograd.gradcheck(fn, (q, k, v, rpb), fast_mode=True)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
def test_half_precision(dtype):
    q, k, v, rpb = make_inputs(1, (20, 18), 2, 16, dtype=dtype, rpb_kernel=(5, 5))
    check_against_reference(q, k, v, rpb, (5, 5), (2, 1), (1, 1), (False, False))


def test_rpb_keeps_its_dtype_under_bf16_inputs():
    q, k, v, rpb = make_inputs(1, (9, 9), 2, 8, dtype=torch.bfloat16, rpb_kernel=(3, 3), rpb_dtype=torch.float32)
    check_against_reference(q, k, v, rpb, (3, 3), (1, 1), (1, 1), (False, False))


def test_lse_only_when_asked():
    q, k, v, _ = make_inputs(1, (9, 8), 2, 8)
    out, lse = na_torch(q, k, v, (3, 3), (1, 1), (1, 1), (False, False), None, 0.3)
    assert lse is None
    ref, _ = na_reference(q, k, v, (3, 3), (1, 1), (1, 1), (False, False), None, 0.3)
    assert_close('out', ref, out, TOLERANCES[torch.float32][0])


def test_public_api_torch_backend():
    q, k, v, _ = make_inputs(2, (16, 15), 4, 8)
    out = na2d(q, k, v, 7, backend='torch')
    ref = na2d(q, k, v, 7, backend='reference')
    assert_close('out', ref, out, TOLERANCES[torch.float32][0])


def test_torch_compile_fullgraph():
    q, k, v, rpb = make_inputs(2, (9, 8), 2, 4, rpb_kernel=(3, 3))

    def fn(q, k, v, rpb):
        out, lse = na_torch(q, k, v, (3, 3), (2, 1), (1, 1), (False, False), rpb, 0.5, return_lse=True)
        return out.sum() + lse.sum()

    compiled = torch.compile(fn, fullgraph=True, backend='aot_eager')
    eager_grads = torch.autograd.grad(fn(q, k, v, rpb), (q, k, v, rpb))
    loss = compiled(q, k, v, rpb)
    assert_close('loss', fn(q, k, v, rpb), loss, 1e-6)
    for name, ref, grad in zip(('dq', 'dk', 'dv', 'drpb'), eager_grads,
                               torch.autograd.grad(loss, (q, k, v, rpb))):
        assert_close(name, ref, grad, 1e-5)


def test_autocast_keeps_fp32_compute():
    """Under bf16 autocast (forward only, as autocast is meant to be used) the results stay fp32-accurate."""
    q, k, v, rpb = make_inputs(1, (10, 9), 2, 8, rpb_kernel=(3, 3))
    args = (3, 3), (1, 1), (1, 1), (False, False), rpb, 0.3
    ref, _ = na_reference(q, k, v, *args)
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v, rpb))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, _ = na_torch(q, k, v, *args)
    assert out.dtype == torch.float32
    assert_close('out', ref, out, TOLERANCES[torch.float32][0])
    for name, ref_grad, grad in zip(('dq', 'dk', 'dv', 'drpb'), ref_grads,
                                    torch.autograd.grad(out.sum(), (q, k, v, rpb))):
        assert_close(name, ref_grad, grad, TOLERANCES[torch.float32][1])


@pytest.fixture
def fresh_bias_cache(monkeypatch):
    cache = torch_impl._BiasCache(2 ** 20)
    monkeypatch.setattr(torch_impl, '_BIAS_CACHE', cache)
    return cache


def reference_out(q, k, v, rpb, kernel):
    args = (1,) * len(kernel), (1,) * len(kernel), (False,) * len(kernel)
    return na_reference(q.double(), k.double(), v.double(), kernel, *args, rpb.double(), 0.3)[0]


def test_bias_cache_serves_inference_and_never_goes_stale(fresh_bias_cache):
    q, k, v, rpb = (t.detach() for t in make_inputs(1, (13, 12), 2, 8, rpb_kernel=(5, 5)))
    args = (5, 5), (1, 1), (1, 1), (False, False)
    with torch.no_grad():
        first = na_torch(q, k, v, *args, rpb, 0.3)[0]
        assert len(fresh_bias_cache.entries) == 1
        again = na_torch(q, k, v, *args, rpb, 0.3)[0]
        assert torch.equal(first, again) and len(fresh_bias_cache.entries) == 1
        # an in-place change that bumps no version counter (through .data) must still be seen
        rpb.data.add_(torch.randn_like(rpb))
        changed = na_torch(q, k, v, *args, rpb, 0.3)[0]
    assert len(fresh_bias_cache.entries) == 1
    assert_close('out', reference_out(q, k, v, rpb, (5, 5)), changed, TOLERANCES[torch.float32][0])
    # another map size with the same table is another plan: its own entry, its own correct result
    q2, k2, v2, _ = (t.detach() if t is not None else t for t in make_inputs(1, (9, 16), 2, 8))
    with torch.no_grad():
        other = na_torch(q2, k2, v2, *args, rpb, 0.3)[0]
    assert len(fresh_bias_cache.entries) == 2
    assert_close('out', reference_out(q2, k2, v2, rpb, (5, 5)), other, TOLERANCES[torch.float32][0])


def test_bias_cache_not_used_when_rpb_needs_grad(fresh_bias_cache):
    q, k, v, rpb = make_inputs(1, (9, 9), 2, 8, rpb_kernel=(3, 3))
    out = na_torch(q, k, v, (3, 3), (1, 1), (1, 1), (False, False), rpb, 0.3)[0]
    assert not fresh_bias_cache.entries
    (grad,) = torch.autograd.grad(out.sum(), rpb)
    assert grad.abs().sum() > 0


def test_bias_cache_stays_within_its_bound(fresh_bias_cache):
    tables = []  # kept alive: five distinct tables, five distinct keys
    with torch.no_grad():
        for i in range(5):
            q, k, v, rpb = (t.detach() for t in make_inputs(1, (9, 9), 2, 8, rpb_kernel=(3, 3)))
            tables.append(rpb)
            out = na_torch(q, k, v, (3, 3), (1, 1), (1, 1), (False, False), rpb, 0.3)[0]
            assert_close('out', reference_out(q, k, v, rpb, (3, 3)), out, TOLERANCES[torch.float32][0])
            if i == 0:  # room for three masks of this size
                fresh_bias_cache.max_bytes = 3 * fresh_bias_cache.bytes
    assert len(fresh_bias_cache.entries) == 3
    assert fresh_bias_cache.bytes <= fresh_bias_cache.max_bytes


@pytest.mark.parametrize(('chunk_bytes', 'mask_copy_bytes'), [(1, 0), (10 ** 5, 0), (10 ** 5, 10 ** 9)],
                         ids=['image-by-image', 'few-images-call-per-image', 'few-images-one-call'])
def test_batch_chunks(chunk_bytes, mask_copy_bytes, monkeypatch):
    """Images processed in chunks (one per chunk, or a few: one SDPA call each or one call) give the batch's results."""
    monkeypatch.setattr(torch_impl, '_CHUNK_BYTES', chunk_bytes)
    monkeypatch.setattr(torch_impl, '_MASK_COPY_BYTES', mask_copy_bytes)
    q, k, v, rpb = make_inputs(5, (12, 13), 2, 8, rpb_kernel=(5, 5))
    check_against_reference(q, k, v, rpb, (5, 5), (1, 2), (1, 1), (False, False))
    q, k, v, _ = make_inputs(3, (12, 13), 4, 8, heads_kv=2)
    check_against_reference(q, k, v, None, (5, 3), (2, 1), (1, 1), (False, True))


@pytest.mark.parametrize(('spatial', 'kernel', 'dilation'), [
    pytest.param((40, 37), (7, 7), (1, 1), id='40x37-k7'),
    pytest.param((29, 31), (5, 7), (2, 3), id='29x31-k57-d23'),
])
def test_inference_tiles_match_reference(spatial, kernel, dilation):
    """Without autograd, 2-D calls take the cost-model tile (a tiled plan here), still exact."""
    stride = (1, 1)
    tile = choose_tile(spatial, kernel, dilation, stride, 8, inference=True)
    longest = tuple(-(-n // d) for n, d in zip(spatial, dilation))
    assert tile != longest and all(1 <= t <= torch_impl.MAX_TILE or t == m for t, m in zip(tile, longest))
    q, k, v, rpb = (t.detach() for t in make_inputs(2, spatial, 2, 8, rpb_kernel=kernel))
    with torch.no_grad():
        out, lse = na_torch(q, k, v, kernel, dilation, stride, (False, False), rpb, 0.3, return_lse=True)
    ref_out, ref_lse = na_reference(q.double(), k.double(), v.double(), kernel, dilation, stride, (False, False),
                                    rpb.double(), 0.3)
    assert_close('out', ref_out, out, TOLERANCES[torch.float32][0])
    assert_close('lse', ref_lse, lse, 1e-6)
