"""The neighborhood-attention spec (reference) and every backend against it, through the public API.

Backend-specific cases live in test_na_torch.py and test_na_triton.py; this file holds what applies to all:
the reference against an independent per-query loop and against natten, fp64 gradcheck, a seeded sweep of
valid configurations over every backend, argument validation and backend selection.
"""
from __future__ import annotations

import itertools
import os
import traceback

import pytest
import torch
from kernel_helpers import TOLERANCES, TRITON_DEVICE, assert_close, sample_na_configs

from zoo_kernels import na1d, na2d, na3d, neighborhood_attention
from zoo_kernels.neighborhood.reference import na_reference

EXTENDED = os.environ.get('ZOO_EXTENDED_TESTS', '0') == '1'


def naive_na(q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale):
    """One query at a time, windows written out from the formulas of kernels.md §1.2 in original coordinates."""
    batch, *spatial, heads, _ = q.shape
    rep = heads // k.shape[-2]
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    for pos in itertools.product(*(range(n) for n in spatial)):
        per_axis = []
        for x, n, ks, d, s, c in zip(pos, spatial, kernel_size, dilation, stride, is_causal):
            g, xl = x % d, x // d
            glen = len(range(g, n, d))
            if c:
                leader = min((xl // s) * s + s - 1, glen - 1)
                start, end = max(leader - ks + 1, 0), xl + 1
            else:
                leader = min((xl // s) * s + s // 2, glen - 1)
                start = min(max(leader - ks // 2, 0), glen - ks)
                end = start + ks
            per_axis.append([(j * d + g, j - xl + ks - 1) for j in range(start, end)])
        for b, h in itertools.product(range(batch), range(heads)):
            logits, values = [], []
            for combo in itertools.product(*per_axis):
                key_pos = tuple(c[0] for c in combo)
                logit = scale * (q[(b, *pos, h)].double() @ k[(b, *key_pos, h // rep)].double())
                if rpb is not None:
                    logit = logit + rpb[(h, *(c[1] for c in combo))].double()
                logits.append(logit)
                values.append(v[(b, *key_pos, h // rep)].double())
            probs = torch.softmax(torch.stack(logits), 0)
            out[(b, *pos, h)] = (probs[:, None] * torch.stack(values)).sum(0)
    return out


def make_inputs(batch, spatial, heads, dim, *, heads_kv=None, dim_v=None, rpb_kernel=None, dtype=torch.float32,
                requires_grad=False):
    heads_kv = heads_kv or heads
    q = torch.randn(batch, *spatial, heads, dim, dtype=dtype)
    k = torch.randn(batch, *spatial, heads_kv, dim, dtype=dtype)
    v = torch.randn(batch, *spatial, heads_kv, dim_v or dim, dtype=dtype)
    rpb = None if rpb_kernel is None else torch.randn(heads, *(2 * x - 1 for x in rpb_kernel), dtype=dtype)
    tensors = [t for t in (q, k, v, rpb) if t is not None]
    for t in tensors:
        t.requires_grad_(requires_grad)
    return q, k, v, rpb


REFERENCE_CASES = [
    pytest.param((1, (9,), 2, 4), (3,), (2,), (1,), (False,), True, id='1d-L9-k3-d2-rpb'),
    pytest.param((1, (10,), 1, 4), (4,), (2,), (3,), (True,), False, id='1d-L10-k4-d2-s3-causal'),
    pytest.param((2, (7, 5), 2, 3), (3, 5), (2, 1), (1, 1), (False, False), True, id='2d-7x5-k35-d21-rpb'),
    pytest.param((1, (6, 7), 1, 3), (2, 3), (3, 2), (2, 1), (True, False), False, id='2d-6x7-even-stride-causal'),
    pytest.param((1, (4, 5, 6), 2, 2), (3, 3, 3), (1, 1, 2), (1, 1, 1), (False, False, False), True, id='3d-rpb'),
    pytest.param((1, (4, 5, 4), 1, 2), (2, 3, 2), (2, 1, 1), (1, 3, 2), (False, True, True), False, id='3d-causal'),
]


@pytest.mark.parametrize(('shape', 'kernel', 'dilation', 'stride', 'causal', 'use_rpb'), REFERENCE_CASES)
def test_reference_matches_naive_loop(shape, kernel, dilation, stride, causal, use_rpb):
    batch, spatial, heads, dim = shape
    q, k, v, rpb = make_inputs(batch, spatial, heads, dim, rpb_kernel=kernel if use_rpb else None,
                               dtype=torch.float64)
    out, lse = na_reference(q, k, v, kernel, dilation, stride, causal, rpb, 0.7)
    expected = naive_na(q, k, v, kernel, dilation, stride, causal, rpb, 0.7)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:-1]


def test_reference_grouped_query_heads_match_naive_loop():
    q, k, v, _ = make_inputs(1, (5, 6), 4, 3, heads_kv=2, dim_v=5, dtype=torch.float64)
    out, _ = na_reference(q, k, v, (3, 3), (1, 2), (1, 1), (False, False), None, 0.5)
    torch.testing.assert_close(out, naive_na(q, k, v, (3, 3), (1, 2), (1, 1), (False, False), None, 0.5))


def test_reference_lse_is_logsumexp_of_window_logits():
    q, k, v, rpb = make_inputs(1, (6,), 1, 4, rpb_kernel=(3,), dtype=torch.float64)
    _, lse = na_reference(q, k, v, (3,), (1,), (1,), (False,), rpb, 0.5)
    # query 0 sees keys 0..2 at offsets 0, 1, 2 -> bias entries 2, 3, 4
    logits = 0.5 * (k[0, :3, 0] @ q[0, 0, 0]) + rpb[0, 2:5]
    torch.testing.assert_close(lse[0, 0, 0].double(), torch.logsumexp(logits, 0), atol=1e-6, rtol=0)


@pytest.mark.parametrize(('spatial', 'kernel', 'dilation', 'stride', 'causal', 'use_rpb'), [
    pytest.param((6,), (3,), (2,), (1,), (False,), True, id='1d-rpb'),
    pytest.param((4, 5), (3, 3), (1, 1), (1, 1), (False, False), True, id='2d-rpb'),
    pytest.param((5, 4), (2, 3), (2, 1), (2, 1), (True, False), False, id='2d-causal-stride'),
    pytest.param((3, 3, 4), (2, 3, 2), (1, 1, 2), (1, 1, 1), (False, False, True), False, id='3d'),
])
def test_reference_gradcheck(spatial, kernel, dilation, stride, causal, use_rpb):
    q, k, v, rpb = make_inputs(1, spatial, 2, 3, heads_kv=1, rpb_kernel=kernel if use_rpb else None,
                               dtype=torch.float64, requires_grad=True)
    inputs = (q, k, v) + ((rpb,) if use_rpb else ())

    def fn(q, k, v, rpb=None):
        return na_reference(q, k, v, kernel, dilation, stride, causal, rpb, 0.6)[0]  # lse is fp32 by contract

    assert torch.autograd.gradcheck(fn, inputs)


def _import_natten():
    """natten, the peer the reference is checked against. It is in the test extra, so CI always has it: an import
    failure fails the natten tests with the error and its traceback, it never skips them."""
    try:
        import natten
    except Exception:  # a missing install, or one that no longer imports (ABI / torch API drift): both are failures
        error = traceback.format_exc()
    else:
        return natten
    pytest.fail(f'natten (a test-extra dependency, pip install -e ".[test]") failed to import:\n{error}', pytrace=False)


NATTEN_CASES = [
    pytest.param((1, (9, 11), 2, 16), (3, 3), (2, 2), (1, 1), (False, False), id='9x11-k3-d2'),
    pytest.param((1, (13, 10), 2, 8), (3, 3), (2, 3), (1, 1), (False, False), id='13x10-d23-nondivisible'),
    pytest.param((2, (30, 45), 1, 8), (7, 7), (4, 6), (1, 1), (False, False), id='30x45-k7-d46'),
    pytest.param((1, (12, 12), 1, 8), (4, 6), (1, 2), (2, 3), (False, False), id='12x12-even-stride'),
    pytest.param((1, (12, 11), 1, 8), (4, 3), (2, 1), (1, 2), (True, False), id='12x11-causal-dilated'),
    pytest.param((1, (7, 7), 2, 8), (7, 7), (1, 1), (1, 1), (False, False), id='7x7-k7-full'),
    pytest.param((1, (23,), 2, 8), (5,), (3,), (2,), (True,), id='1d-causal-stride'),
    pytest.param((1, (5, 6, 7), 1, 8), (3, 3, 3), (1, 2, 1), (1, 1, 2), (False, True, False), id='3d-mixed'),
]


@pytest.mark.parametrize(('shape', 'kernel', 'dilation', 'stride', 'causal'), NATTEN_CASES)
def test_reference_matches_natten(shape, kernel, dilation, stride, causal):
    natten = _import_natten()
    batch, spatial, heads, dim = shape
    q, k, v, _ = make_inputs(batch, spatial, heads, dim)
    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(spatial)]
    expected = fn(q, k, v, kernel_size=kernel, dilation=dilation, stride=stride, is_causal=causal)
    out = neighborhood_attention(q, k, v, kernel, dilation=dilation, is_causal=causal, stride=stride,
                                 backend='reference')
    assert_close('out', expected, out, ratio=1e-6)


def test_reference_random_sweep_matches_natten():
    natten = _import_natten()
    for rank in (1, 2, 3):
        for i, cfg in enumerate(sample_na_configs(24 if EXTENDED else 6, rank, seed=100 + rank, max_size=9)):
            q, k, v, _ = make_inputs(1, cfg['spatial'], 2, 8)
            fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[rank]
            expected = fn(q, k, v, kernel_size=cfg['kernel_size'], dilation=cfg['dilation'], stride=cfg['stride'],
                          is_causal=cfg['is_causal'])
            out = neighborhood_attention(q, k, v, cfg['kernel_size'], dilation=cfg['dilation'],
                                         is_causal=cfg['is_causal'], stride=cfg['stride'], backend='reference')
            assert_close(f'rank {rank} config {i} {cfg}', expected, out, ratio=1e-6)


def _run_backend(backend, q, k, v, cfg, rpb, grad_out, grad_lse):
    """out, lse and the gradients of ``backend`` on CPU inputs (run on the GPU for Triton where there is one)."""
    device = TRITON_DEVICE if backend == 'triton' else 'cpu'
    q, k, v, rpb = (None if t is None else t.detach().to(device).requires_grad_() for t in (q, k, v, rpb))
    out, lse = neighborhood_attention(q, k, v, cfg['kernel_size'], dilation=cfg['dilation'],
                                      is_causal=cfg['is_causal'], rpb=rpb, backend=backend, stride=cfg['stride'],
                                      return_lse=True)
    tensors = [t for t in (q, k, v, rpb) if t is not None]
    grads = torch.autograd.grad((out * grad_out.to(device)).sum() + (lse * grad_lse.to(device)).sum(), tensors)
    return out.cpu(), lse.cpu(), [g.cpu() for g in grads]


SWEEP_BACKENDS = [
    pytest.param('torch', 12, 10, id='torch'),
    pytest.param('triton', 3, 6, id='triton', marks=pytest.mark.triton),
]


@pytest.mark.parametrize(('backend', 'count', 'max_size'), SWEEP_BACKENDS)
@pytest.mark.parametrize('rank', [1, 2, 3])
def test_backend_random_sweep_matches_reference(backend, count, max_size, rank, nan_poisoning):
    """Seeded valid configurations: out, lse and every gradient against the reference (replay by seed)."""
    count = count * 4 if EXTENDED else count
    for i, cfg in enumerate(sample_na_configs(count, rank, seed=7 * rank + 1, max_size=max_size)):
        torch.manual_seed(i)
        heads, heads_kv = (4, 2) if i % 3 == 1 else (2, 2)
        q, k, v, rpb = make_inputs(2 if i % 2 else 1, cfg['spatial'], heads, 16, heads_kv=heads_kv,
                                   dim_v=8 if i % 4 == 3 else None,
                                   rpb_kernel=cfg['kernel_size'] if cfg['use_rpb'] else None, requires_grad=True)
        grad_out = torch.randn(*q.shape[:-1], v.shape[-1])
        grad_lse = torch.randn(q.shape[:-1])
        expected = _run_backend('reference', q, k, v, cfg, rpb, grad_out, grad_lse)
        actual = _run_backend(backend, q, k, v, cfg, rpb, grad_out, grad_lse)
        fwd_tol, grad_tol = TOLERANCES[torch.float32]
        label = f'{backend} rank {rank} config {i} {cfg}'
        assert_close(f'{label}: out', expected[0], actual[0], fwd_tol)
        assert_close(f'{label}: lse', expected[1], actual[1], fwd_tol)
        for name, e, a in zip(('dq', 'dk', 'dv', 'drpb'), expected[2], actual[2]):
            assert_close(f'{label}: {name}', e, a, grad_tol)


@pytest.mark.parametrize('backend', ['reference', 'torch', pytest.param('triton', marks=pytest.mark.triton)])
def test_backends_accept_strided_views(backend):
    qkv = torch.randn(1, 9, 8, 3, 2, 16, device=TRITON_DEVICE if backend == 'triton' else 'cpu')
    q, k, v = qkv.unbind(3)
    expected = na2d(q.contiguous(), k.contiguous(), v.contiguous(), 3, dilation=2, backend='reference')
    assert_close('out', expected, na2d(q, k, v, 3, dilation=2, backend=backend), TOLERANCES[torch.float32][0])
    # channels-last style: a permuted [B, C, H, W] tensor viewed as heads-last
    q_cl = q.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    assert not q_cl.is_contiguous()
    assert_close('out', expected, na2d(q_cl, k, v, 3, dilation=2, backend=backend), TOLERANCES[torch.float32][0])


def test_rank_wrappers_and_default_scale():
    q, k, v, _ = make_inputs(1, (8,), 2, 16)
    out = na1d(q, k, v, 3)
    expected = na1d(q, k, v, 3, scale=16 ** -0.5, backend='reference')
    assert_close('out', expected, out, 1e-5)
    assert na2d(*make_inputs(1, (5, 5), 1, 4)[:3], 3).shape == (1, 5, 5, 1, 4)
    assert na3d(*make_inputs(1, (3, 4, 5), 1, 4)[:3], 2).shape == (1, 3, 4, 5, 1, 4)


def test_automatic_backend_on_cpu_is_torch(monkeypatch):
    import zoo_kernels.neighborhood.torch_impl as torch_impl
    calls = []
    original = torch_impl.na_torch
    monkeypatch.setattr(torch_impl, 'na_torch', lambda *a, **kw: calls.append(1) or original(*a, **kw))
    monkeypatch.delenv('ZOO_NA_BACKEND', raising=False)
    na2d(*make_inputs(1, (5, 5), 1, 4)[:3], 3)
    assert calls == [1]


def test_environment_variable_forces_backend(monkeypatch):
    import zoo_kernels.neighborhood.reference as reference
    calls = []
    original = reference.na_reference
    monkeypatch.setattr(reference, 'na_reference', lambda *a, **kw: calls.append(1) or original(*a, **kw))
    monkeypatch.setenv('ZOO_NA_BACKEND', 'reference')
    na2d(*make_inputs(1, (5, 5), 1, 4)[:3], 3)
    assert calls == [1]
    monkeypatch.setenv('ZOO_NA_BACKEND', 'cuda-magic')
    with pytest.raises(ValueError, match='ZOO_NA_BACKEND'):
        na2d(*make_inputs(1, (5, 5), 1, 4)[:3], 3)


def _qkv(spatial=(8, 8), heads=2, dim=8, **kw):
    return make_inputs(1, spatial, heads, dim, **kw)[:3]


ERROR_CASES = [
    pytest.param(lambda: na2d('q', *_qkv()[1:], 3), TypeError, 'query must be a torch.Tensor', id='query-type'),
    pytest.param(lambda: na2d(*(t.long() for t in _qkv()), 3), TypeError, 'query must have dtype', id='int-dtype'),
    pytest.param(lambda: na2d(*_qkv((8,)), 3), ValueError, 'na2d expects query', id='rank-mismatch'),
    pytest.param(lambda: neighborhood_attention(torch.randn(2, 3, 4), *_qkv()[1:], 3), ValueError,
                 '1 to 3 spatial axes', id='rank-0'),
    pytest.param(lambda: na2d(_qkv()[0], _qkv()[1].half(), _qkv()[2], 3), ValueError, 'key must have the same dtype',
                 id='dtype-mismatch'),
    pytest.param(lambda: na2d(_qkv()[0], _qkv((8, 7))[1], _qkv()[2], 3), ValueError,
                 'key must have the batch and spatial sizes', id='key-shape'),
    pytest.param(lambda: na2d(_qkv()[0], _qkv()[1], _qkv(heads=1)[2], 3), ValueError, 'value must have the heads',
                 id='value-heads'),
    pytest.param(lambda: na2d(_qkv(heads=3)[0], *_qkv(heads=2)[1:], 3), ValueError, 'key heads must divide',
                 id='gqa-heads'),
    pytest.param(lambda: na2d(_qkv()[0], _qkv(dim=4)[1], _qkv()[2], 3), ValueError, 'key must have the head_dim',
                 id='head-dim'),
    pytest.param(lambda: na2d(*_qkv(), 1), ValueError, 'kernel_size must be >= 2', id='kernel-1'),
    pytest.param(lambda: na2d(*_qkv(), 3.0), TypeError, 'kernel_size must be int', id='kernel-float'),
    pytest.param(lambda: na2d(*_qkv(), (3, 3, 3)), ValueError, 'kernel_size must be a single value or a tuple of 2',
                 id='kernel-len'),
    pytest.param(lambda: na2d(*_qkv(), 3, dilation=0), ValueError, 'dilation must be >= 1', id='dilation-0'),
    pytest.param(lambda: na2d(*_qkv(), 3, dilation=3), ValueError,
                 r'axis 0 has size 8 but kernel_size=3 and dilation=3', id='kernel-times-dilation'),
    pytest.param(lambda: na2d(*_qkv((8, 4)), 5), ValueError, 'axis 1 has size 4', id='kernel-larger-than-input'),
    pytest.param(lambda: na2d(*_qkv(), 3, stride=4), ValueError, 'stride must satisfy', id='stride'),
    pytest.param(lambda: na2d(*_qkv(), 3, is_causal=1), TypeError, 'is_causal must be bool', id='causal-type'),
    pytest.param(lambda: na2d(*_qkv(), 3, scale='x'), TypeError, 'scale must be a float', id='scale-type'),
    pytest.param(lambda: na2d(*_qkv(), 3, scale=-1.0), ValueError, 'scale must be a positive', id='scale-value'),
    pytest.param(lambda: na2d(*_qkv(), 3, backend='cuda'), ValueError, 'backend must be one of', id='backend-name'),
    pytest.param(lambda: na2d(*(t.double().to(TRITON_DEVICE) for t in _qkv()), 3, backend='triton'), ValueError,
                 'triton supports float16, bfloat16 and float32', id='triton-fp64'),
    pytest.param(lambda: na2d(*_qkv(), 4, rpb=torch.zeros(2, 7, 7)), ValueError, 'rpb needs an odd kernel_size',
                 id='rpb-even-kernel'),
    pytest.param(lambda: na2d(*_qkv(), 3, is_causal=(True, False), rpb=torch.zeros(2, 5, 5)), ValueError,
                 'rpb cannot be combined with causal', id='rpb-causal'),
    pytest.param(lambda: na2d(*_qkv(), 3, stride=2, rpb=torch.zeros(2, 5, 5)), ValueError, 'rpb needs stride 1',
                 id='rpb-stride'),
    pytest.param(lambda: na2d(*_qkv(), 3, rpb=torch.zeros(2, 5, 4)), ValueError, r'rpb must have shape .*\[2, 5, 5\]',
                 id='rpb-shape'),
    pytest.param(lambda: na2d(*_qkv(), 3, rpb=torch.zeros(2, 5)), ValueError, 'rpb must have 3 dimensions',
                 id='rpb-rank'),
    pytest.param(lambda: na2d(*_qkv(), 3, rpb=torch.zeros(2, 5, 5, dtype=torch.long)), TypeError,
                 'rpb must have dtype', id='rpb-dtype'),
    pytest.param(lambda: na2d(*_qkv(), 3, return_lse=1), TypeError, 'return_lse must be a bool', id='return-lse'),
    pytest.param(lambda: na2d(*_qkv(), 3, 2), TypeError, 'positional arguments', id='natten-positional-stride'),
]


@pytest.mark.parametrize(('call', 'error', 'match'), ERROR_CASES)
def test_invalid_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_device_mismatch_is_rejected():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match='key must have the same device'):
        na2d(q.cuda(), k, v.cuda(), 3)


class _NAModule(torch.nn.Module):
    def __init__(self, dim=8, heads=2, kernel_size=3, dilation=2):
        super().__init__()
        self.heads, self.kernel_size, self.dilation = heads, kernel_size, dilation
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.rpb = torch.nn.Parameter(torch.randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1))

    def forward(self, x):
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).reshape(b, h, w, 3, self.heads, c // self.heads).unbind(3)
        return na2d(q, k, v, self.kernel_size, dilation=self.dilation, rpb=self.rpb).reshape(b, h, w, c)


@pytest.mark.parametrize(('compiler', 'sizes'), [
    # dynamo + AOT autograd is where graph breaks would happen; the second size traces symbolic shapes
    pytest.param('aot_eager', ((9, 10), (12, 7)), id='aot_eager-two-resolutions'),
    pytest.param('inductor', ((9, 10),), id='inductor'),
])
def test_torch_compile_fullgraph_module_with_automatic_backend(monkeypatch, compiler, sizes):
    """A module calling na2d with backend=None compiles without graph breaks, forward and backward."""
    monkeypatch.delenv('ZOO_NA_BACKEND', raising=False)
    torch._dynamo.reset()
    module = _NAModule()
    compiled = torch.compile(module, fullgraph=True, backend=compiler)
    for size in sizes:
        x = torch.randn(2, *size, 8, requires_grad=True)
        expected = module(x)
        out = compiled(x)
        assert_close(f'out {size}', expected, out, 1e-5)
        grads = torch.autograd.grad(out.square().sum(), (x, module.rpb))
        for name, e, g in zip(('dx', 'drpb'), torch.autograd.grad(expected.square().sum(), (x, module.rpb)), grads):
            assert_close(f'{name} {size}', e, g, 1e-4)
