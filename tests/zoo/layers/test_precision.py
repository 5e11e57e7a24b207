"""The linear-attention cores (InLine, RALA, flow attention) compute float16 inputs in float32, with and without
autocast (``zoo.layers._precision``): bit for bit the float32 core of the same inputs, cast back. bfloat16 inputs:
RALA likewise; InLine and flow attention in bfloat16 (their token-sized products), InLine with its key centring kept
exact."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from zoo.layers import Rope2d, flow_attention_core, inline_attention_core, rala_core
from zoo.layers._precision import compute_dtype

B, HEADS, SIDE, HEAD_DIM = 2, 2, 16, 16
N, C = SIDE * SIDE, HEADS * HEAD_DIM


def _cores():
    rope = Rope2d(HEAD_DIM)((SIDE, SIDE))
    return {
        'rala': lambda q, k, v: rala_core(q, k, v, rope, HEAD_DIM ** -0.5),
        'flow': lambda q, k, v: flow_attention_core(q, k, v),
        # InLine takes [B, N, C] tokens
        'inline': lambda q, k, v: inline_attention_core(
            *(t.transpose(1, 2).reshape(B, N, C) for t in (q, k, v)), num_heads=HEADS),
    }


def test_compute_dtype():
    assert compute_dtype(torch.float16) == compute_dtype(torch.bfloat16) == torch.float32
    assert compute_dtype(torch.float32) == torch.float32 and compute_dtype(torch.float64) == torch.float64
    assert compute_dtype(torch.bfloat16, keep_bfloat16=True) == torch.bfloat16
    assert compute_dtype(torch.float16, keep_bfloat16=True) == torch.float32


@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize(('core', 'dtype'), [
    ('rala', torch.bfloat16), ('rala', torch.float16), ('flow', torch.float16), ('inline', torch.float16)])
def test_16bit_inputs_are_computed_in_float32(core, dtype, autocast):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, HEADS, N, HEAD_DIM).to(dtype) for _ in range(3))
    fn = _cores()[core]
    expected = fn(q.float(), k.float(), v.float()).to(dtype)
    with torch.autocast('cpu', dtype=dtype, enabled=autocast):
        out = fn(q, k, v)
    assert out.dtype == dtype
    assert torch.equal(out, expected)


class _TokenMatmulDtypes(TorchDispatchMode):
    """Records the dtypes of the operands with a token axis (a dimension of size ``N``) of every matrix product
    dispatched inside it (InLine's ``[d, d]`` correction terms have none)."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.bmm, torch.ops.aten.mm, torch.ops.aten.matmul):
            self.dtypes.update(a.dtype for a in args if isinstance(a, torch.Tensor) and N in a.shape)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize(('core', 'dtype', 'matmul_dtype'), [
    ('inline', torch.bfloat16, torch.bfloat16), ('inline', torch.float16, torch.float32),
    ('flow', torch.bfloat16, torch.bfloat16), ('flow', torch.float16, torch.float32),
    ('rala', torch.bfloat16, torch.float32), ('rala', torch.float16, torch.float32)])
def test_core_token_matmul_dtype(core, dtype, matmul_dtype, autocast):
    """InLine's and flow attention's token-sized products run in bfloat16 for bfloat16 inputs (as the official code
    under autocast); float16 is widened to float32 (a float16 K^T V overflows at large token counts), and RALA
    widens both."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, HEADS, N, HEAD_DIM).to(dtype) for _ in range(3))
    with torch.autocast('cpu', dtype=dtype, enabled=autocast), _TokenMatmulDtypes() as seen:
        out = _cores()[core](q, k, v)
    assert out.dtype == dtype
    assert seen.dtypes == {matmul_dtype}


def _correlated_keys_values(key_mean, value_mean, n=4096, channels=32, seed=0):
    """bfloat16 ``[2, n, channels]`` q, k, v: values correlated with the keys, both offset by large means."""
    g = torch.Generator().manual_seed(seed)
    q, z, e = (torch.randn(2, n, channels, generator=g) for _ in range(3))
    mix = torch.randn(channels, channels, generator=g) * 0.3
    k = key_mean + z
    v = value_mean + z @ mix + 0.3 * e
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


@pytest.mark.parametrize(('key_mean', 'value_mean'), [(0., 0.), (1., 1.), (20., 10.), (50., 20.)])
def test_inline_bfloat16_core_keeps_the_centring(key_mean, value_mean):
    """Keys and values with large means: ``(K - mean K)^T V`` is a small difference of large terms. The attention term
    (the output less mean(V)) of the bfloat16 core stays within 1.5x of the float32 core's error against float64 (on
    the same bfloat16 inputs). At means 20 / 10 and 50 / 20, centring on the [d, d] product in bfloat16 gives 28-42x
    the float32 core's error, centring by the bfloat16-rounded mean (the official code under autocast) 8-9x."""
    q, k, v = _correlated_keys_values(key_mean, value_mean)
    heads = 2
    ref = inline_attention_core(q.double(), k.double(), v.double(), heads)
    attention_term = (ref - v.double().mean(dim=1, keepdim=True)).norm()

    def err(out):
        return ((out.double() - ref).norm() / attention_term).item()

    ours = inline_attention_core(q, k, v, heads)
    fp32_core = inline_attention_core(q.float(), k.float(), v.float(), heads).bfloat16()
    assert ours.dtype == torch.bfloat16
    assert err(ours) <= 1.5 * err(fp32_core) + 1e-3


def test_inline_bfloat16_core_gradients():
    """Gradients of the bfloat16 core (through the split mean) against float64 on large-mean keys and values."""
    q, k, v = _correlated_keys_values(20., 10., n=1024)
    heads = 2
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    grads = []
    for dtype in (torch.bfloat16, torch.float64):
        inputs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        (inline_attention_core(*inputs, heads) * g.to(dtype)).sum().backward()
        grads.append([t.grad.double() for t in inputs])
    for ours, ref in zip(*grads):
        assert ((ours - ref).norm() / ref.norm()).item() < 2e-2
