"""SpatialReductionAttentionCl against a direct computation and timm's pvt_v2 Attention; spatial_pool_cl modes."""
import pytest
import torch
import torch.nn.functional as F
from timm.models.pvt_v2 import Attention as PvtV2Attention

from zoo.layers import SpatialReductionAttentionCl, spatial_pool_cl


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def direct_sra(layer: SpatialReductionAttentionCl, x: torch.Tensor) -> torch.Tensor:
    """Per-head softmax attention of every token over the reduced map, written out with the layer's weights."""
    B, H, W, C = x.shape
    heads, hd = layer.num_heads, C // layer.num_heads
    tokens = x.reshape(B, H * W, C)
    if layer.linear:
        src = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), layer.pool_size)
        src = F.conv2d(src, layer.sr.weight, layer.sr.bias).flatten(2).transpose(1, 2)
        src = F.gelu(F.layer_norm(src, (C,), layer.norm.weight, layer.norm.bias, layer.norm.eps))
    elif layer.sr is not None:
        r = layer.sr_ratio
        src = F.conv2d(x.permute(0, 3, 1, 2), layer.sr.weight, layer.sr.bias, stride=r)
        assert src.shape[-2:] == (H // r, W // r)  # floored, as the official conv
        src = F.layer_norm(src.flatten(2).transpose(1, 2), (C,), layer.norm.weight, layer.norm.bias, layer.norm.eps)
    else:
        src = tokens
    q = F.linear(tokens, layer.q.weight, layer.q.bias)
    k, v = F.linear(src, layer.kv.weight, layer.kv.bias).split(C, dim=-1)
    out = torch.empty_like(q)
    for b in range(B):
        for h in range(heads):
            sl = slice(h * hd, (h + 1) * hd)
            probs = torch.softmax(q[b, :, sl] @ k[b, :, sl].T * hd ** -0.5, dim=-1)
            out[b, :, sl] = probs @ v[b, :, sl]
    return F.linear(out, layer.proj.weight, layer.proj.bias).reshape(B, H, W, C)


@pytest.mark.parametrize('fused', [True, False], ids=['sdpa', 'manual'])
@pytest.mark.parametrize(('size', 'kwargs'), [
    pytest.param((8, 8), dict(sr_ratio=1), id='8x8-sr1'),
    pytest.param((8, 12), dict(sr_ratio=4), id='8x12-sr4'),
    pytest.param((9, 11), dict(sr_ratio=2), id='9x11-sr2-floored'),
    pytest.param((9, 11), dict(linear=True, pool_size=3), id='9x11-linear'),
])
def test_sra_matches_direct(size, kwargs, fused):
    layer = _perturb(SpatialReductionAttentionCl(16, num_heads=2, **kwargs)).double()
    layer.fused_attn = fused
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), direct_sra(layer, x))


@pytest.mark.parametrize(('sr_ratio', 'linear'), [(1, False), (2, False), (1, True)], ids=['sr1', 'sr2', 'linear'])
def test_sra_equals_timm_pvt_v2_attention(sr_ratio, linear):
    ref = _perturb(PvtV2Attention(32, num_heads=4, sr_ratio=sr_ratio, linear_attn=linear)).eval()
    layer = SpatialReductionAttentionCl(32, num_heads=4, sr_ratio=sr_ratio, linear=linear).eval()
    layer.load_state_dict(ref.state_dict(), strict=True)  # q, kv, proj, sr, norm: the official names
    x = torch.randn(2, 14, 14, 32)
    expected = ref(x.flatten(1, 2), (14, 14)).reshape(2, 14, 14, 32)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_sra_pads_maps_smaller_than_the_ratio():
    layer = SpatialReductionAttentionCl(8, num_heads=2, sr_ratio=4)
    x = torch.randn(1, 3, 6, 8)
    assert layer.reduce(x).shape == (1, 1, 1, 8)
    xp = F.pad(x, (0, 0, 0, 0, 0, 1))
    torch.testing.assert_close(layer.reduce(x), layer.reduce(xp))
    assert layer(x).shape == x.shape


@pytest.mark.parametrize(('mode', 'size', 'ref'), [
    ('avg', 2, lambda t: F.avg_pool2d(t, 2)),
    ('max', 3, lambda t: F.max_pool2d(t, 3)),
    ('ada_avg', 3, lambda t: F.adaptive_avg_pool2d(t, 3)),
    ('ada_max', 2, lambda t: F.adaptive_max_pool2d(t, 2)),
])
def test_spatial_pool_cl_modes(mode, size, ref):
    x = torch.randn(2, 7, 9, 5)
    torch.testing.assert_close(spatial_pool_cl(x, mode, size), ref(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


def test_parameter_names_and_meta():
    assert [n for n, _ in SpatialReductionAttentionCl(8, 2).named_parameters()] == [
        'q.weight', 'q.bias', 'kv.weight', 'kv.bias', 'proj.weight', 'proj.bias']
    layer = SpatialReductionAttentionCl(8, 2, sr_ratio=2, device='meta')
    assert {n.split('.')[0] for n, _ in layer.named_parameters()} == {'q', 'kv', 'proj', 'sr', 'norm'}
    assert all(p.is_meta for p in layer.parameters())


@pytest.mark.parametrize(('call', 'match'), [
    (lambda: SpatialReductionAttentionCl(8, 3), 'num_heads'),
    (lambda: SpatialReductionAttentionCl(8, 2, sr_ratio=0), 'sr_ratio'),
    (lambda: SpatialReductionAttentionCl(8, 2, linear=True, pool_size=0), 'pool_size'),
    (lambda: SpatialReductionAttentionCl(8, 2, qk_scale=-1.), 'qk_scale'),
    (lambda: SpatialReductionAttentionCl(8, 2)(torch.randn(1, 4, 4, 6)), 'x must'),
    (lambda: spatial_pool_cl(torch.randn(1, 4, 4, 2), 'mean', 2), 'mode'),
    (lambda: spatial_pool_cl(torch.randn(1, 4, 4, 2), 'avg', 0), 'size'),
])
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
