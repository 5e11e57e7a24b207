"""Deformable convolution (``DeformConv2dPack`` on torchvision) and LITv2's deformable token merging.

The official DCN semantics (offsets ``[dy, dx]`` per kernel position, row-major; bilinear samples, zero off the map)
are checked against independent references: integer offsets are a shifted plain conv, half-pixel offsets the mean of
two shifted convs. The official-code comparison with arbitrary offsets is in the LITv2 fixtures.
"""
import pytest
import torch
import torch.nn.functional as F

from zoo.layers import DeformConv2dPack, DeformTokenMergeCl


def _shift(x, dy, dx):
    """``x`` read at ``(i + dy, j + dx)``, zero outside the map."""
    H, W = x.shape[-2:]
    out = torch.zeros_like(x)
    ys, yd = (slice(dy, H), slice(0, H - dy)) if dy >= 0 else (slice(0, H + dy), slice(-dy, H))
    xs, xd = (slice(dx, W), slice(0, W - dx)) if dx >= 0 else (slice(0, W + dx), slice(-dx, W))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def _pack(offset_bias, k=2, stride=2, cin=4, cout=6):
    torch.manual_seed(0)
    m = DeformConv2dPack(cin, cout, k, stride=stride).double()
    with torch.no_grad():
        m.conv_offset.bias.copy_(torch.tensor(offset_bias, dtype=torch.float64))
    return m


@pytest.mark.parametrize(('dy', 'dx'), [(0, 1), (1, 0), (-1, 2), (0, 0)])
def test_integer_offsets_are_a_shifted_conv(dy, dx):
    m = _pack([dy, dx] * 4)
    x = torch.randn(2, 4, 6, 8, dtype=torch.float64)
    ref = F.conv2d(_shift(x, dy, dx), m.weight, m.bias, stride=2)
    torch.testing.assert_close(m(x), ref)


def test_offset_channel_order_is_dy_dx_per_kernel_position():
    # only kernel position 1 (row 0, column 1) moves, one pixel down
    m = _pack([0, 0, 1, 0, 0, 0, 0, 0])
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    w = m.weight
    moved = torch.zeros_like(w)
    moved[..., 0, 1] = w[..., 0, 1]
    ref = F.conv2d(x, w - moved, m.bias, stride=2) + F.conv2d(_shift(x, 1, 0), moved, None, stride=2)
    torch.testing.assert_close(m(x), ref)


def test_fractional_offsets_interpolate_bilinearly():
    m = _pack([0, 0.5] * 4)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    ref = 0.5 * (F.conv2d(x, m.weight, None, stride=2) + F.conv2d(_shift(x, 0, 1), m.weight, None, stride=2))
    torch.testing.assert_close(m(x), ref + m.bias[:, None, None])


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
    with pytest.raises(ValueError, match=r'\[B, 4, H, W\]'):
        DeformConv2dPack(4, 4, 2)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r'\[B, H, W, 4\]'):
        DeformTokenMergeCl(4, 8)(torch.randn(1, 4, 4, 4, 1))
