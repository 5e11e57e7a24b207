"""Deformable convolution (``DeformConv2dPack`` on torchvision) and LITv2's deformable token merging.

The official DCN semantics (offsets ``[dy, dx]`` per kernel position, row-major; bilinear samples, zero off the map)
are checked against independent references: integer offsets are a shifted plain conv, half-pixel offsets the mean of
two shifted convs. The official-code comparison with arbitrary offsets is in the LITv2 fixtures.
"""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from zoo.layers import DeformConv2dPack, DeformTokenMergeCl
from zoo.layers.deform_merge import deform_conv2d_sampled


def _shift(x, dy, dx):
    """``x`` read at ``(i + dy, j + dx)``, zero outside the map."""
    H, W = x.shape[-2:]
    out = torch.zeros_like(x)
    ys, yd = (slice(dy, H), slice(0, H - dy)) if dy >= 0 else (slice(0, H + dy), slice(-dy, H))
    xs, xd = (slice(dx, W), slice(0, W - dx)) if dx >= 0 else (slice(0, W + dx), slice(-dx, W))
    out[..., yd, xd] = x[..., ys, xs]
    return out


IMPLS = pytest.mark.parametrize('impl', ['sampled', 'torchvision'])


def _pack(offset_bias, impl, k=2, stride=2, cin=4, cout=6):
    torch.manual_seed(0)
    m = DeformConv2dPack(cin, cout, k, stride=stride, impl=impl).double()
    with torch.no_grad():
        m.conv_offset.bias.copy_(torch.tensor(offset_bias, dtype=torch.float64))
    return m


@IMPLS
@pytest.mark.parametrize(('dy', 'dx'), [(0, 1), (1, 0), (-1, 2), (0, 0)])
def test_integer_offsets_are_a_shifted_conv(dy, dx, impl):
    m = _pack([dy, dx] * 4, impl)
    x = torch.randn(2, 4, 6, 8, dtype=torch.float64)
    ref = F.conv2d(_shift(x, dy, dx), m.weight, m.bias, stride=2)
    torch.testing.assert_close(m(x), ref)


@IMPLS
def test_offset_channel_order_is_dy_dx_per_kernel_position(impl):
    # only kernel position 1 (row 0, column 1) moves, one pixel down
    m = _pack([0, 0, 1, 0, 0, 0, 0, 0], impl)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    w = m.weight
    moved = torch.zeros_like(w)
    moved[..., 0, 1] = w[..., 0, 1]
    ref = F.conv2d(x, w - moved, m.bias, stride=2) + F.conv2d(_shift(x, 1, 0), moved, None, stride=2)
    torch.testing.assert_close(m(x), ref)


@IMPLS
def test_fractional_offsets_interpolate_bilinearly(impl):
    m = _pack([0, 0.5] * 4, impl)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    ref = 0.5 * (F.conv2d(x, m.weight, None, stride=2) + F.conv2d(_shift(x, 0, 1), m.weight, None, stride=2))
    torch.testing.assert_close(m(x), ref + m.bias[:, None, None])


@pytest.mark.parametrize(('stride', 'padding', 'dilation', 'size'), [
    (2, 0, 1, (7, 9)), (1, 1, 1, (5, 6)), (2, 1, 2, (9, 8)), (1, 1, 1, (1, 4)),
])
def test_sampled_equals_torchvision_with_random_offsets_and_gradients(stride, padding, dilation, size):
    """Offsets of order one (fractional, some off the map), 3x3 and 2x2 kernels: values and all four gradients."""
    g = torch.Generator().manual_seed(3)
    for k in (2, 3):
        x = torch.randn(2, 3, *size, dtype=torch.float64, generator=g, requires_grad=True)
        w = torch.randn(5, 3, k, k, dtype=torch.float64, generator=g, requires_grad=True)
        b = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
        ho = (size[0] + 2 * padding - dilation * (k - 1) - 1) // stride + 1
        wo = (size[1] + 2 * padding - dilation * (k - 1) - 1) // stride + 1
        off = (1.5 * torch.randn(2, 2 * k * k, ho, wo, dtype=torch.float64, generator=g)).requires_grad_()
        args = (x, off, w, b)
        ref = deform_conv2d(*args, stride=stride, padding=padding, dilation=dilation)
        out = deform_conv2d_sampled(*args, (stride,) * 2, (padding,) * 2, (dilation,) * 2)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        grads_ref = torch.autograd.grad(ref.square().sum(), args)
        grads = torch.autograd.grad(out.square().sum(), args)
        for a, r in zip(grads, grads_ref):
            torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(('size', 'out'), [((7, 9), (3, 4)), ((1, 5), (1, 2)), ((1, 1), (1, 1))])
def test_token_merging_sizes(size, out):
    merge = DeformTokenMergeCl(4, 8).eval()
    y = merge(torch.randn(2, *size, 4))
    assert tuple(y.shape) == (2, *out, 8)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_16bit_runs_in_float32(dtype):
    merge = DeformTokenMergeCl(4, 8).eval()
    x = torch.randn(1, 6, 6, 4)
    ref = merge(x)
    out = merge.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match='kernel_size'):
        DeformConv2dPack(4, 4, 0)
    with pytest.raises(ValueError, match='padding'):
        DeformConv2dPack(4, 4, 2, padding=-1)
    with pytest.raises(ValueError, match='in_channels'):
        DeformConv2dPack(0, 4, 2)
    with pytest.raises(ValueError, match='impl'):
        DeformConv2dPack(4, 4, 2, impl='dcn')
    with pytest.raises(ValueError, match=r'\[B, 4, H, W\]'):
        DeformConv2dPack(4, 4, 2)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r'\[B, H, W, 4\]'):
        DeformTokenMergeCl(4, 8)(torch.randn(1, 4, 4, 4, 1))
