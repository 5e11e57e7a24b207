"""PointwiseConv2d: nn.Conv2d(in, out, 1) in parameters and values, forward and backward, on channels-last (the Linear
path) and NCHW maps (the convolution)."""
import pytest
import torch
import torch.nn as nn
from timm.layers import _fx

from zoo.layers import PointwiseConv2d, is_channels_last, to_channels_last


@pytest.mark.parametrize('channels_last', [True, False])
@pytest.mark.parametrize('bias', [True, False])
def test_equals_conv1x1_forward_and_backward(channels_last, bias):
    torch.manual_seed(0)
    ours = PointwiseConv2d(12, 20, bias=bias).double()
    ref = nn.Conv2d(12, 20, 1, bias=bias).double()
    ref.load_state_dict(ours.state_dict())
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    x = torch.randn(3, 12, 5, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(3, 20, 5, 7, dtype=torch.float64)
    out, out_ref = ours(x), ref(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    grads = torch.autograd.grad(out, [x, *ours.parameters()], g)
    grads_ref = torch.autograd.grad(out_ref, [x, *ref.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_scriptable_and_an_fx_leaf():
    mod = PointwiseConv2d(4, 6)
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(torch.jit.script(mod)(x), mod(x))
    assert PointwiseConv2d in _fx._leaf_modules


@pytest.mark.parametrize('channels_last', [True, False])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('side', [5, 2])  # 2 x 5 x 5 pixels > 12 input channels: folded; 2 x 2 x 2 < 12: scaled after
def test_out_scale_equals_scaling_the_output(channels_last, bias, side):
    """``out_scale`` (a layer scale) folded into the weight where the map is larger than the input width, applied to
    the output elsewhere: both equal ``conv(x) * scale`` with all gradients, the scale's included."""
    torch.manual_seed(0)
    ours = PointwiseConv2d(12, 20, bias=bias).double()
    ref = nn.Conv2d(12, 20, 1, bias=bias).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 12, side, side, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    scale = torch.rand(20, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 20, side, side, dtype=torch.float64)
    out, out_ref = ours(x, scale), ref(x) * scale.reshape(1, -1, 1, 1)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    grads = torch.autograd.grad(out, [x, scale, *ours.parameters()], g)
    grads_ref = torch.autograd.grad(out_ref, [x, scale, *ref.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('shape', [(19,), (20, 1), ()])
def test_out_scale_of_the_wrong_shape_is_refused(shape):
    conv = PointwiseConv2d(12, 20)
    with pytest.raises(ValueError, match=r'out_scale must have shape \[20\]'):
        conv(torch.randn(1, 12, 3, 3), torch.ones(shape))


def test_channels_last_helpers():
    """``to_channels_last`` / ``is_channels_last``: the memory format outside transforms (4-D maps only); inside
    ``torch.func.vmap`` (where PyTorch cannot query or produce it) the map is passed through and counts as not
    channels-last; ``torch.compile(fullgraph=True)`` traces through them."""
    from torch.func import vmap
    x = torch.randn(2, 3, 4, 5)
    y = to_channels_last(x)
    assert is_channels_last(y) and not is_channels_last(x) and torch.equal(x, y)
    tokens = torch.randn(2, 3, 4)
    assert to_channels_last(tokens) is tokens and not is_channels_last(tokens)
    batched = torch.randn(3, *x.shape)
    out = vmap(lambda m: to_channels_last(m) * float(is_channels_last(m)) + 1)(batched)
    torch.testing.assert_close(out, torch.ones_like(batched))
    compiled = torch.compile(lambda m: to_channels_last(m) + 1, fullgraph=True, backend='eager')
    assert is_channels_last(compiled(x))
    layer = PointwiseConv2d(3, 6)
    per_sample = vmap(lambda m: layer(m.unsqueeze(0)).squeeze(0))(to_channels_last(x))
    torch.testing.assert_close(per_sample, layer(x))
