"""The linear-attention cores (InLine, RALA, flow attention) compute 16-bit inputs in float32, with and without
autocast (``zoo.layers._precision``): bit for bit the float32 core of the same inputs, cast back."""
import pytest
import torch

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


@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('core', ['rala', 'flow', 'inline'])
def test_16bit_inputs_are_computed_in_float32(core, dtype, autocast):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, HEADS, N, HEAD_DIM).to(dtype) for _ in range(3))
    fn = _cores()[core]
    expected = fn(q.float(), k.float(), v.float()).to(dtype)
    with torch.autocast('cpu', dtype=dtype, enabled=autocast):
        out = fn(q, k, v)
    assert out.dtype == dtype
    assert torch.equal(out, expected)
