"""Flow attention against a direct implementation of the official math (thuml/Flowformer ``Flowformer_CV/flowformer.py``
``Flow_Attention``), fp16/bf16 at large token counts, bad arguments."""
import math

import pytest
import torch
import torch.nn.functional as F

from zoo.layers import FlowAttention, flow_attention_core


def _my_sum(a, b):
    # "nhld,nhd->nhl"
    return torch.sum(a * b[:, :, None, :], dim=-1)


def _official_core(q, k, v, mutate=None):
    """The official normalisation, conservation, allocation and competition; ``mutate`` plants one deviation."""
    q, k = torch.sigmoid(q), torch.sigmoid(k)
    sink_incoming = 1.0 / (_my_sum(q + 1e-6, k.sum(dim=2) + 1e-6) + 1e-6)
    source_outgoing = 1.0 / (_my_sum(k + 1e-6, q.sum(dim=2) + 1e-6) + 1e-6)
    conserved_sink = _my_sum(q + 1e-6, (k * source_outgoing[:, :, :, None]).sum(dim=2) + 1e-6) + 1e-6
    conserved_source = _my_sum(k + 1e-6, (q * sink_incoming[:, :, :, None]).sum(dim=2) + 1e-6) + 1e-6
    if mutate != 'no_clamp':
        conserved_source = torch.clamp(conserved_source, min=-1.0, max=1.0)
    ratio = 1.0 if mutate == 'allocation_ratio' else float(q.shape[2]) / float(k.shape[2])
    sink_allocation = torch.sigmoid(conserved_sink * ratio)
    source_competition = torch.softmax(conserved_source, dim=-1) * float(k.shape[2])
    if mutate == 'no_competition':
        source_competition = torch.ones_like(source_competition)
    kv = k.transpose(-2, -1) @ (v * source_competition[:, :, :, None])
    out = ((q @ kv) * sink_incoming[:, :, :, None])
    return out if mutate == 'no_allocation' else out * sink_allocation[:, :, :, None]


def _official(mod, x):
    B, N, C = x.shape
    qkv = F.linear(x, mod.qkv.weight, mod.qkv.bias).reshape(B, N, 3, mod.num_heads, C // mod.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    out = _official_core(q, k, v).transpose(1, 2).reshape(B, N, C)
    return F.linear(out, mod.proj.weight, mod.proj.bias)


def _layer(dim, heads, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    mod = FlowAttention(dim, heads).to(dtype)
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_(0, 1 / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.1)
    return mod.eval()


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _core_grads(fn, q, k, v, grad_out, dtype=torch.float64):
    """float64 gradients of ``sum(fn(q, k, v) * grad_out)`` with respect to q, k, v, given to ``fn`` in ``dtype``."""
    inputs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    (fn(*inputs).double() * grad_out).sum().backward()
    return [t.grad.double() for t in inputs]


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('dim, heads, n', [(96, 12, 49), (48, 4, 1), (36, 12, 200)])
def test_matches_official_math(fused, dim, heads, n):
    mod = _layer(dim, heads)
    mod.fused_attn = fused
    x = torch.randn(2, n, dim, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(mod(x), _official(mod, x)) < 1e-12


def test_channels_last_map_equals_tokens():
    mod = _layer(48, 12)
    x = torch.randn(2, 5, 7, 48, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mod(x), mod(x.reshape(2, 35, 48)).reshape(2, 5, 7, 48))


def test_core_with_different_sink_and_source_counts():
    """N queries and M keys (the allocation ratio N / M and competition times M): both paths equal the official."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 17, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 3, 40, 8, generator=g, dtype=torch.float64) for _ in range(2))
    ref = _official_core(q, k, v)
    for fused in (True, False):
        assert _rel(flow_attention_core(q, k, v, fused=fused), ref) < 1e-12


@pytest.mark.parametrize('mutation', ['no_clamp', 'allocation_ratio', 'no_competition', 'no_allocation'])
def test_planted_deviations_are_detected(mutation):
    g = torch.Generator().manual_seed(1)
    errors = []
    # fewer sinks than sources (competition varies), and more (the conserved outgoing flow exceeds 1: clamp active)
    for n_q, n_k in ((30, 50), (200, 20)):
        q = 2 * torch.randn(1, 2, n_q, 8, generator=g, dtype=torch.float64)
        k = 2 * torch.randn(1, 2, n_k, 8, generator=g, dtype=torch.float64)
        v = torch.randn(1, 2, n_k, 8, generator=g, dtype=torch.float64)
        errors.append(_rel(flow_attention_core(q, k, v), _official_core(q, k, v, mutate=mutation)))
    assert max(errors) > 1e-3


@pytest.mark.parametrize('n_q, n_k', [(49, 49), (30, 70)])
def test_gradients_match_official_math(n_q, n_k):
    """The core's custom backwards (the row products of ``_RowDot`` / ``_WeightedSum``) against autograd through the
    official math, float64; and ``gradcheck`` on a small case."""
    g = torch.Generator().manual_seed(4)
    q = 2 * torch.randn(2, 3, n_q, 8, generator=g, dtype=torch.float64)
    k = 2 * torch.randn(2, 3, n_k, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, n_k, 8, generator=g, dtype=torch.float64)
    grad_out = torch.randn(2, 3, n_q, 8, generator=g, dtype=torch.float64)
    ours = _core_grads(flow_attention_core, q, k, v, grad_out)
    for a, ref in zip(ours, _core_grads(_official_core, q, k, v, grad_out)):
        torch.testing.assert_close(a, ref, rtol=1e-10, atol=1e-12)
    small = [t[:1, :1, :6].detach().requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(flow_attention_core, small)


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
@pytest.mark.parametrize('scripted', [False, True])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_16bit_autocast_at_1024px_stage1_tokens(dtype, scripted):
    """65,536 tokens (256x256: a 1024x1024-px input at stride 4), 12 heads: no overflow, close to float64 (measured
    bf16: 4.7e-3 with the bfloat16 core, the official code under autocast 4.8e-3); also scripted (TorchScript ignores
    ``autocast(enabled=False)``: the scripted core computes float16 in float64)."""
    mod = _layer(24, 12, dtype=torch.float32, seed=2)
    x = torch.randn(1, 256, 256, 24)
    with torch.no_grad():
        ref = _official(mod.double(), x.double().reshape(1, -1, 24)).reshape(x.shape)
        mod.float()
        run = torch.jit.script(mod) if scripted else mod
        with torch.autocast('cpu', dtype=dtype):
            out = run(x)
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert _rel(out, ref) < (2e-2 if dtype == torch.bfloat16 else 5e-3)


def test_bfloat16_core_gradients_as_official():
    """The bfloat16 core (its custom row-product backwards included) against float64: gradients within 1.5x of the
    official math's error on the same bfloat16 inputs (measured 1.3e-2 / 2.5e-2 / 6.1e-3 for q / k / v, the
    official 1.3e-2 / 3.1e-2 / 5.3e-3; the float32 core 8e-7)."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (2 * torch.randn(2, 2, 1024, 8, generator=g, dtype=torch.float64) for _ in range(3))
    grad_out = torch.randn(2, 2, 1024, 8, generator=g, dtype=torch.float64)
    ref = _core_grads(flow_attention_core, q, k, v, grad_out)
    ours = _core_grads(flow_attention_core, q, k, v, grad_out, torch.bfloat16)
    official = _core_grads(_official_core, q, k, v, grad_out, torch.bfloat16)
    for a, b, r in zip(ours, official, ref):
        assert _rel(a, r) <= 1.5 * _rel(b, r)


def test_half_core_is_safe_where_the_official_order_overflows():
    """Half q, k, v straight into the core: computed in float32; the official order in float16 overflows (``q @ kv``
    sums ~N / 2 positive terms per channel at 256x256 tokens, beyond float16's 65504)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 256 * 256, 8, generator=g) + 1. for _ in range(3))
    ref = _official_core(q.double(), k.double(), v.double())
    out = flow_attention_core(q.half(), k.half(), v.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert _rel(out, ref) < 5e-3
    assert not torch.isfinite(_official_core(q.half(), k.half(), v.half())).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match='num_heads'):
        FlowAttention(40, 12)
    with pytest.raises(ValueError, match='proj_drop'):
        FlowAttention(48, 12, proj_drop=1.)
    mod = FlowAttention(48, 12)
    with pytest.raises(ValueError, match=r'x must have shape \[B, N, 48\]'):
        mod(torch.randn(2, 10, 32))
    with pytest.raises(ValueError, match='x must have shape'):
        mod(torch.randn(48))
    for x in (torch.randn(0, 10, 48), torch.randn(2, 0, 48), torch.randn(2, 3, 0, 48)):
        with pytest.raises(ValueError, match='x must be non-empty'):
            mod(x)
    with pytest.raises(TypeError, match='floating-point.*int64'):
        mod(torch.ones(2, 10, 48, dtype=torch.long))
    with pytest.raises(TypeError, match=r'dtype of the parameters \(torch.float32.*float64'):
        mod(torch.randn(2, 10, 48, dtype=torch.float64))
    q = torch.randn(2, 4, 10, 8)
    with pytest.raises(ValueError, match=r'k, v \[B, heads, M, d\]'):
        flow_attention_core(q, torch.randn(2, 4, 6, 8), torch.randn(2, 4, 7, 8))
    with pytest.raises(ValueError, match=r'q must be \[B, heads, N, d\]'):
        flow_attention_core(q[0], q[0], q[0])
    with pytest.raises(ValueError, match='k must be non-empty'):
        flow_attention_core(q, q[:, :, :0], q[:, :, :0])


def test_per_sample_gradients_through_torch_func():
    """``torch.func.vmap(grad(...))`` runs through the layer's custom backwards and equals per-sample autograd."""
    from torch.func import functional_call, grad, vmap
    torch.manual_seed(0)
    layer = FlowAttention(16, 2)
    x = torch.randn(3, 1, 10, 16)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, xi):
        return functional_call(layer, p, (xi,)).square().sum()

    got = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(3):
        expected = torch.autograd.grad(loss(dict(layer.named_parameters()), x[i]), list(layer.parameters()))
        for (name, _), e in zip(layer.named_parameters(), expected):
            torch.testing.assert_close(got[name][i], e, rtol=1e-4, atol=1e-5)
