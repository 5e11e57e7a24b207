"""Meta and fake tensors through the public entries: outputs shaped as on CPU, nothing computed, differentiable.

``torch.export`` traces with fake tensors too; there the real computation must be recorded, not the shape-only
path.
"""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from zoo_kernels import na1d, na2d, na3d, routed_attention

NA_CASES = [
    pytest.param(na1d, (2, 11), 3, 2, None, id='na1d-L11-k3-d2'),
    pytest.param(na2d, (1, 9, 7), (3, 5), 1, 'rpb', id='na2d-9x7-k3x5-rpb'),
    pytest.param(na2d, (2, 8, 8), 3, 2, 'gqa', id='na2d-8x8-k3-d2-gqa'),
    pytest.param(na3d, (1, 4, 5, 6), 3, 1, 'rpb', id='na3d-4x5x6-k3-rpb'),
]


def _na_inputs(shape, kernel_size, extra, device='cpu', dtype=torch.float32):
    heads, heads_kv = (4, 2) if extra == 'gqa' else (2, 2)
    q = torch.randn(*shape, heads, 8, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(*shape, heads_kv, 8, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(*shape, heads_kv, 6, device=device, dtype=dtype, requires_grad=True)
    rank = len(shape) - 1
    ks = (kernel_size,) * rank if isinstance(kernel_size, int) else kernel_size
    rpb = None
    if extra == 'rpb':
        rpb = torch.randn(heads, *(2 * k - 1 for k in ks), device=device, requires_grad=True)
    return q, k, v, rpb


def _bra_inputs(per_head, soft, device='cpu', dtype=torch.float32):
    q = torch.randn(2, 2, 4, 5, 8, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(2, 2, 6, 3, 8, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(2, 2, 6, 3, 7, device=device, dtype=dtype, requires_grad=True)
    lead = (2, 2, 4) if per_head else (2, 4)
    r_idx = torch.rand(*lead, 6).topk(3, dim=-1).indices.to(device)
    r_weight = torch.rand(*lead, 3, device=device, requires_grad=True) if soft else None
    return q, k, v, r_idx, r_weight


def _to_meta(tensors):
    return [t.detach().to('meta').requires_grad_(t.requires_grad) if t is not None else None for t in tensors]


def _spec(t):
    return tuple(t.shape), t.dtype


@pytest.mark.parametrize(('fn', 'shape', 'kernel_size', 'dilation', 'extra'), NA_CASES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
def test_na_meta_matches_cpu_shapes(fn, shape, kernel_size, dilation, extra, dtype):
    inputs = _na_inputs(shape, kernel_size, extra, dtype=dtype)
    out, lse = fn(*inputs[:3], kernel_size, dilation=dilation, rpb=inputs[3], return_lse=True)
    meta = _to_meta(inputs)
    m_out, m_lse = fn(*meta[:3], kernel_size, dilation=dilation, rpb=meta[3], return_lse=True)
    assert m_out.is_meta and m_lse.is_meta
    assert _spec(m_out) == _spec(out) and _spec(m_lse) == _spec(lse) == (tuple(out.shape[:-1]), torch.float32)
    assert fn(*meta[:3], kernel_size, dilation=dilation, rpb=meta[3]).shape == out.shape
    # backward on meta: every differentiable input gets a gradient of its own shape and dtype
    (m_out.sum() + m_lse.sum()).backward()
    for t in meta:
        if t is not None:
            assert t.grad is not None and t.grad.is_meta and _spec(t.grad) == _spec(t)


@pytest.mark.parametrize('per_head', [False, True], ids=['shared', 'per_head'])
@pytest.mark.parametrize('soft', [False, True], ids=['hard', 'soft'])
def test_routed_attention_meta_matches_cpu_shapes(per_head, soft):
    inputs = _bra_inputs(per_head, soft)
    out, lse = routed_attention(*inputs[:4], r_weight=inputs[4], return_lse=True)
    meta = _to_meta(inputs)
    m_out, m_lse = routed_attention(*meta[:4], r_weight=meta[4], return_lse=True)
    assert m_out.is_meta and _spec(m_out) == _spec(out) and _spec(m_lse) == _spec(lse)
    m_out.sum().backward()
    for t in (meta[0], meta[1], meta[2], meta[4]):
        if t is not None:
            assert t.grad is not None and _spec(t.grad) == _spec(t)
    assert meta[3].grad is None


def test_meta_needs_no_data():
    # out-of-range indices cannot be seen without data: the meta path validates shapes only
    q = torch.empty(1, 1, 2, 3, 4, device='meta')
    r_idx = torch.empty(1, 2, 1, dtype=torch.long, device='meta')
    assert routed_attention(q, q, q, r_idx).shape == (1, 1, 2, 3, 4)
    # shape errors are still raised
    with pytest.raises(ValueError, match='kernel_size'):
        na2d(*(torch.empty(1, 4, 4, 1, 8, device='meta'),) * 3, kernel_size=5)


def test_fake_tensor_mode():
    na = _na_inputs((1, 9, 7), 3, 'rpb')
    bra = _bra_inputs(False, True)
    out_na = na2d(*na[:3], 3, rpb=na[3])
    out_bra = routed_attention(*bra[:4], r_weight=bra[4])
    with FakeTensorMode() as mode:
        fake_na = [mode.from_tensor(t) for t in na]
        fake_bra = [mode.from_tensor(t) for t in bra]
        f_na = na2d(*fake_na[:3], 3, rpb=fake_na[3])
        f_bra, f_lse = routed_attention(*fake_bra[:4], r_weight=fake_bra[4], return_lse=True)
        f_bra.sum().backward()
    assert isinstance(f_na, FakeTensor) and _spec(f_na) == _spec(out_na)
    assert isinstance(f_bra, FakeTensor) and _spec(f_bra) == _spec(out_bra) and f_lse.dtype == torch.float32
    assert isinstance(fake_bra[4].grad, FakeTensor) and fake_bra[4].grad.shape == bra[4].shape
    # the real path is untouched afterwards (no fake tensor left in a cache)
    torch.testing.assert_close(na2d(*na[:3], 3, rpb=na[3]), out_na)


def test_export_records_the_computation():
    class Both(torch.nn.Module):
        def forward(self, x, q, k, v, r_idx):
            return na2d(x, x, x, 3, rpb=None).sum() + routed_attention(q, k, v, r_idx).sum()

    x = torch.randn(1, 6, 5, 2, 4)
    q, k, v, r_idx, _ = _bra_inputs(False, False)
    args = (x, q.detach(), k.detach(), v.detach(), r_idx)
    program = torch.export.export(Both(), args)
    torch.testing.assert_close(program.module()(*args), Both()(*args))
