"""The TorchScript entries of the kernels: ``torch.ops.zoo.neighborhood_attention`` and
``torch.ops.zoo.routed_attention`` are the functional APIs as dispatcher ops (what scripted layers call). Same values
and gradients as the functional calls, the functional API's argument errors, meta tensors, and callable from a
scripted function."""
import pytest
import torch

from zoo_kernels.neighborhood import na2d
from zoo_kernels.routing import routed_attention


def _na_inputs(requires_grad=True):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 7, 6, 2, 8, dtype=torch.float64, requires_grad=requires_grad) for _ in range(3))
    rpb = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=requires_grad)
    return q, k, v, rpb


def test_na_op_equals_functional_values_and_gradients():
    q, k, v, rpb = _na_inputs()
    out = torch.ops.zoo.neighborhood_attention(q, k, v, [3, 3], [2, 1], rpb, 0.3)
    ref = na2d(q, k, v, 3, dilation=(2, 1), rpb=rpb, scale=0.3)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v, rpb))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v, rpb))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    # scale=None is the default head_dim ** -0.5, not 1
    torch.testing.assert_close(
        torch.ops.zoo.neighborhood_attention(q, k, v, [3, 3], [1, 1], None, None), na2d(q, k, v, 3))


def test_na_op_validates_like_functional():
    q, k, v, _ = _na_inputs(requires_grad=False)
    with pytest.raises(ValueError, match='kernel_size'):
        torch.ops.zoo.neighborhood_attention(q, k, v, [9, 3], [1, 1], None, None)  # 9 > 7 rows


def test_routed_op_equals_functional():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 4, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    r_idx = torch.rand(2, 4, 4).topk(2, dim=-1).indices
    weight = torch.rand(2, 4, 2, dtype=torch.float64)
    out = torch.ops.zoo.routed_attention(q, k, v, r_idx, 0.25, weight)
    ref = routed_attention(q, k, v, r_idx, scale=0.25, r_weight=weight)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
def test_ops_on_meta_and_from_torchscript():
    q = torch.empty(1, 6, 6, 2, 4, device='meta')
    assert torch.ops.zoo.neighborhood_attention(q, q, q, [3, 3], [1, 1], None, None).shape == q.shape

    @torch.jit.script
    def scripted(x: torch.Tensor, r_idx: torch.Tensor) -> torch.Tensor:
        return torch.ops.zoo.routed_attention(x, x, x, r_idx, None, None)

    x = torch.randn(1, 2, 4, 3, 8)
    r_idx = torch.tensor([[[0, 1], [1, 2], [2, 3], [3, 0]]])
    torch.testing.assert_close(scripted(x, r_idx), routed_attention(x, x, x, r_idx))
