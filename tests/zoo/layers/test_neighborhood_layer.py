"""NeighborhoodAttention2d, RpbAttention2d, stems and downsamplers against direct computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from zoo.layers import (
    ConvDownsampleCl,
    ConvStemCl,
    NeighborhoodAttention2d,
    PatchEmbedCl,
    PatchMergingCl,
    RpbAttention2d,
    na_pad_size,
)


def _window(i: int, length: int, k: int, d: int):
    """Legacy NATTEN window of position ``i``: its group's in-group start and the key positions."""
    group, pos = i % d, i // d
    group_len = math.ceil((length - group) / d)
    start = min(max(pos - k // 2, 0), group_len - k)
    return pos, [group + d * (start + a) for a in range(k)]


def direct_na_layer(layer: NeighborhoodAttention2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's output by explicit loops: zero-pad to k*d, qkv, per-query softmax over its window, crop, proj."""
    B, H, W, C = x.shape
    (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation
    Hp, Wp = max(H, kh * dh), max(W, kw * dw)
    xp = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    xp[:, :H, :W] = x
    heads, hd = layer.num_heads, layer.head_dim
    q, k, v = layer.qkv(xp).double().reshape(B, Hp, Wp, 3, heads, hd).unbind(3)
    out = torch.zeros(B, Hp, Wp, heads, hd, dtype=torch.float64)
    rpb = layer.rpb.double()
    for i in range(Hp):
        qi, rows = _window(i, Hp, kh, dh)
        for j in range(Wp):
            qj, cols = _window(j, Wp, kw, dw)
            keys = k[:, rows][:, :, cols]  # [B, kh, kw, heads, hd]
            vals = v[:, rows][:, :, cols]
            logits = torch.einsum('bhd,bxyhd->bhxy', q[:, i, j], keys) * layer.scale
            bias_rows = [r // dh - qi + kh - 1 for r in rows]
            bias_cols = [c // dw - qj + kw - 1 for c in cols]
            logits = logits + rpb[:, bias_rows][:, :, bias_cols]
            probs = logits.flatten(2).softmax(-1).reshape(logits.shape)
            out[:, i, j] = torch.einsum('bhxy,bxyhd->bhd', probs, vals)
    out = out.reshape(B, Hp, Wp, C)[:, :H, :W].to(x.dtype)
    return layer.proj(out)


@pytest.mark.parametrize(('size', 'kernel', 'dilation'), [
    pytest.param((9, 11), 3, 2, id='9x11-k3-d2'),
    pytest.param((7, 10), 5, 1, id='7x10-k5-d1'),
    pytest.param((2, 5), 3, 1, id='2x5-pad-H'),
    pytest.param((4, 4), 3, 2, id='4x4-pad-both-dilated'),
    pytest.param((1, 1), 3, 3, id='1x1-pad-to-9'),
    pytest.param((6, 13), 3, (2, 4), id='6x13-d2x4-pad-W'),
])
def test_na_layer_matches_direct(size, kernel, dilation):
    layer = NeighborhoodAttention2d(16, 2, kernel_size=kernel, dilation=dilation)
    with torch.no_grad():
        layer.rpb.normal_(0, 0.5)
        layer.qkv.bias.normal_(0, 0.5)
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        out = layer(x)
        ref = direct_na_layer(layer, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_na_pad_size():
    assert na_pad_size((56, 56), (7, 7), (8, 8)) == (0, 0)
    assert na_pad_size((40, 60), (7, 7), (8, 8)) == (16, 0)
    assert na_pad_size((3, 2), (3, 3), (1, 2)) == (0, 4)


def test_na_layer_padding_attends_to_padded_tokens():
    # padded tokens are keys with k = v = qkv bias: changing the bias of v changes the output of a tiny map
    layer = NeighborhoodAttention2d(8, 1, kernel_size=3).eval()
    x = torch.randn(1, 2, 2, 8)
    with torch.no_grad():
        before = layer(x)
        layer.qkv.bias[16:].add_(1.0)
        after = layer(x)
    assert not torch.allclose(before, after)


def test_na_layer_grads_and_parameter_names():
    layer = NeighborhoodAttention2d(32, 4, kernel_size=5, dilation=2)
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {
        'qkv.weight': (96, 32), 'qkv.bias': (96,), 'rpb': (4, 9, 9), 'proj.weight': (32, 32), 'proj.bias': (32,)}
    x = torch.randn(2, 7, 12, 32, requires_grad=True)
    layer(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    assert x.grad.shape == x.shape


def test_na_layer_qk_scale_and_no_rpb():
    layer = NeighborhoodAttention2d(16, 2, kernel_size=4, rel_pos_bias=False, qk_scale=0.3)
    assert layer.rpb is None and layer.scale == 0.3
    assert layer(torch.randn(1, 5, 6, 16)).shape == (1, 5, 6, 16)


@pytest.mark.parametrize(('kwargs', 'match'), [
    (dict(dim=10, num_heads=3), 'num_heads'),
    (dict(dim=8, num_heads=2, kernel_size=4), 'kernel_size'),
    (dict(dim=8, num_heads=2, kernel_size=1, rel_pos_bias=False), 'kernel_size'),
    (dict(dim=8, num_heads=2, dilation=0), 'dilation'),
    (dict(dim=8, num_heads=2, attn_drop=0.1), 'attn_drop'),
    (dict(dim=8, num_heads=2, qk_scale=-1.), 'qk_scale'),
])
def test_na_layer_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeighborhoodAttention2d(**kwargs)


def test_na_layer_bad_input():
    with pytest.raises(ValueError, match=r'x must have shape'):
        NeighborhoodAttention2d(8, 2)(torch.randn(1, 8, 5, 5))


def _official_vitrpb_index(size: int) -> torch.Tensor:
    """ViT-RPB's index as the DiNAT code builds it: Swin's query-minus-key index flipped on both axes."""
    coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + size - 1
    return torch.flipud(torch.fliplr(rel[..., 0] * (2 * size - 1) + rel[..., 1]))


@pytest.mark.parametrize('fused', [True, False])
def test_rpb_attention_matches_direct(fused):
    layer = RpbAttention2d(16, 2, grid_size=5).eval()
    layer.fused_attn = fused
    with torch.no_grad():
        layer.rpb.normal_(0, 0.5)
    x = torch.randn(2, 5, 5, 16)
    q, k, v = layer.qkv(x).reshape(2, 25, 3, 2, 8).permute(2, 0, 3, 1, 4)
    bias = layer.rpb.permute(1, 2, 0).flatten(0, 1)[_official_vitrpb_index(5).reshape(-1)].reshape(25, 25, 2)
    attn = ((q * layer.scale) @ k.transpose(-2, -1) + bias.permute(2, 0, 1)).softmax(-1)
    ref = layer.proj((attn @ v).transpose(1, 2).reshape(2, 5, 5, 16))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)
        # a smaller grid uses the centre of the table: same result as the direct formula on that grid
        small = x[:, :3, :4]
        index = _official_vitrpb_index(5).reshape(5, 5, 5, 5)[:3, :4, :3, :4].reshape(12, 12)
        q, k, v = layer.qkv(small).reshape(2, 12, 3, 2, 8).permute(2, 0, 3, 1, 4)
        bias = layer.rpb.permute(1, 2, 0).flatten(0, 1)[index.reshape(-1)].reshape(12, 12, 2).permute(2, 0, 1)
        attn = ((q * layer.scale) @ k.transpose(-2, -1) + bias).softmax(-1)
        ref = layer.proj((attn @ v).transpose(1, 2).reshape(2, 3, 4, 16))
        torch.testing.assert_close(layer(small), ref, atol=1e-5, rtol=1e-5)


def test_rpb_attention_rejects_large_grid():
    with pytest.raises(ValueError, match='img_size'):
        RpbAttention2d(8, 2, grid_size=4)(torch.randn(1, 5, 4, 8))


def test_patch_merging_order_and_padding():
    merge = PatchMergingCl(3, norm_layer=None)
    x = torch.randn(2, 5, 7, 3)
    xp = F.pad(x, (0, 0, 0, 1, 0, 1))
    cat = torch.cat([xp[:, 0::2, 0::2], xp[:, 1::2, 0::2], xp[:, 0::2, 1::2], xp[:, 1::2, 1::2]], -1)
    torch.testing.assert_close(merge(x), merge.reduction(cat))
    assert [n for n, _ in PatchMergingCl(4).named_parameters()] == ['norm.weight', 'norm.bias', 'reduction.weight']


def test_stems_and_conv_downsample():
    x = torch.randn(2, 3, 30, 21)
    stem = ConvStemCl(3, 16)
    assert stem(x).shape == (2, 8, 6, 16)
    assert [n for n, _ in stem.named_parameters()] == [
        'proj.0.weight', 'proj.0.bias', 'proj.1.weight', 'proj.1.bias', 'norm.weight', 'norm.bias']
    patch = PatchEmbedCl(4, 3, 16, norm_layer=None)
    out = patch(x)
    assert out.shape == (2, 8, 6, 16)
    torch.testing.assert_close(out, patch.proj(F.pad(x, (0, 3, 0, 2))).permute(0, 2, 3, 1))
    down = ConvDownsampleCl(16)
    assert down(out).shape == (2, 4, 3, 32)
    assert [n for n, _ in down.named_parameters()] == ['reduction.weight', 'norm.weight', 'norm.bias']


def test_layers_build_on_meta():
    layer = NeighborhoodAttention2d(64, 2, device='meta')
    assert layer.rpb.is_meta and layer.qkv.weight.is_meta
    assert RpbAttention2d(64, 2, device='meta', dtype=torch.float16).rpb.dtype == torch.float16


@pytest.mark.parametrize('make_layer', [
    pytest.param(lambda: NeighborhoodAttention2d(16, 2, kernel_size=3), id='na'),
    pytest.param(lambda: NeighborhoodAttention2d(16, 2, kernel_size=3, rel_pos_bias=False), id='na-no-rpb'),
    pytest.param(lambda: RpbAttention2d(16, 2, grid_size=5), id='vit-rpb'),
])
@pytest.mark.parametrize('frozen_rpb', [False, True], ids=['train-rpb', 'frozen-rpb'])
def test_training_after_inference_mode(make_layer, frozen_rpb):
    """Tables cached during an inference_mode pass (Lightning validates that way first) serve later training."""
    layer = make_layer()
    if layer.rpb is not None:
        layer.rpb.requires_grad_(not frozen_rpb)
    x = torch.randn(2, 5, 5, 16)
    with torch.inference_mode():
        expected = layer(x)
    out = layer(x.requires_grad_())
    out.sum().backward()
    torch.testing.assert_close(out.detach(), expected, atol=1e-6, rtol=1e-6)
    assert x.grad is not None and layer.qkv.weight.grad is not None
