"""HiLo attention against a direct implementation of the official math (ziplab/LITv2).

``_official`` below is the official ``HiLo.forward`` written out on the layer's weights: the classification code
(``classification/models/attentions.py``) on maps divisible by the window, and the detection backbone's padding
(``detection/mmdet/models/backbones/litv2.py``: zero-pad the map to multiples of ``s``, run both branches on the
padded map, crop) elsewhere. Explicit matmuls, reshapes and transposes in the official order; ``nn.AvgPool2d(s)``.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from zoo.layers import HiLoAttentionCl, hilo_head_split


def _official(m: HiLoAttentionCl, x: torch.Tensor, concat_lofi_first: bool = False) -> torch.Tensor:
    B, H, W, C = x.shape
    ws = m.ws
    pad_r, pad_b = (ws - W % ws) % ws, (ws - H % ws) % ws
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    Hp, Wp = x.shape[1:3]
    scale = (C // m.num_heads) ** -0.5

    def hifi(x):
        h_group, w_group = Hp // ws, Wp // ws
        t = x.reshape(B, h_group, ws, w_group, ws, C).transpose(2, 3)
        qkv = m.h_qkv(t).reshape(B, h_group * w_group, -1, 3, m.h_heads, m.h_dim // m.h_heads).permute(
            3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
        attn = (attn @ v).transpose(2, 3).reshape(B, h_group, w_group, ws, ws, m.h_dim)
        return m.h_proj(attn.transpose(2, 3).reshape(B, Hp, Wp, m.h_dim))

    def lofi(x):
        q = m.l_q(x).reshape(B, Hp * Wp, m.l_heads, m.l_dim // m.l_heads).permute(0, 2, 1, 3)
        if ws > 1:
            x_ = torch.nn.AvgPool2d(ws, ws)(x.permute(0, 3, 1, 2)).reshape(B, C, -1).permute(0, 2, 1)
        else:
            x_ = x.reshape(B, -1, C)
        kv = m.l_kv(x_).reshape(B, -1, 2, m.l_heads, m.l_dim // m.l_heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ kv[0].transpose(-2, -1)) * scale).softmax(dim=-1)
        return m.l_proj((attn @ kv[1]).transpose(1, 2).reshape(B, Hp, Wp, m.l_dim))

    if m.h_heads == 0:
        out = lofi(x)
    elif m.l_heads == 0:
        out = hifi(x)
    else:
        parts = [hifi(x), lofi(x)]
        out = torch.cat(parts[::-1] if concat_lofi_first else parts, dim=-1)
    return out[:, :H, :W]


def _layer(dim=48, num_heads=6, window_size=2, alpha=0.5, seed=0, fused=True, **kwargs):
    torch.manual_seed(seed)
    m = HiLoAttentionCl(dim, num_heads=num_heads, window_size=window_size, alpha=alpha, qkv_bias=True,
                        **kwargs).double().eval()
    with torch.no_grad():
        for p in m.parameters():  # non-trivial biases: the zero-padded tokens' keys are the biases
            p.normal_(0, 1 / math.sqrt(p.shape[-1]))
    m.fused_attn = fused
    return m


def _x(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize('fused', [True, False], ids=['sdpa', 'explicit'])
@pytest.mark.parametrize(('alpha', 'size'), [
    (0.5, (8, 8)), (0.9, (8, 12)), (0., (8, 8)), (1., (8, 8)),        # divisible: the classification code
    (0.5, (7, 9)), (0.9, (5, 5)), (0., (3, 7)), (1., (9, 4)),         # odd: the detection code's pad and crop
    (0.5, (1, 1)), (0.5, (1, 6)),                                     # smaller than the window: one padded window
])
def test_matches_official_math(alpha, size, fused):
    m = _layer(alpha=alpha, fused=fused)
    x = _x((2, *size, 48))
    torch.testing.assert_close(m(x), _official(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('size', [(6, 6), (7, 10), (2, 2)])
def test_window_3_and_odd_sizes(size):
    m = _layer(dim=32, num_heads=4, window_size=3, alpha=0.75)
    x = _x((1, *size, 32))
    torch.testing.assert_close(m(x), _official(m, x), rtol=1e-10, atol=1e-10)


def test_window_1_is_plain_msa():
    """s = 1 gives every head to Lo-Fi without pooling, whatever alpha: softmax(q k^T / sqrt(d)) v -> l_proj."""
    for alpha in (0., 0.3, 1.):
        m = _layer(dim=32, num_heads=4, window_size=1, alpha=alpha)
        assert (m.l_heads, m.h_heads, m.l_dim) == (4, 0, 32)
        assert not hasattr(m, 'h_qkv') and not hasattr(m, 'h_proj')
        x = _x((2, 5, 7, 32))
        q = m.l_q(x).reshape(2, 35, 4, 8).transpose(1, 2)
        k, v = m.l_kv(x).reshape(2, 35, 2, 4, 8).permute(2, 0, 3, 1, 4)
        ref = m.l_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 7, 32))
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(m(x), _official(m, x), rtol=1e-10, atol=1e-10)


def test_planted_bugs_are_seen():
    """The comparison can fail: a swapped concat order and an uncounted zero padding both move the output."""
    m = _layer(alpha=0.5)
    x = _x((1, 7, 9, 48))
    ref = _official(m, x)
    assert (m(x) - _official(m, x, concat_lofi_first=True)).abs().max() > 1e-2
    # Lo-Fi keys pooled over the real tokens only (count_include_pad=False semantics) differ from the official mean
    pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), 2, ceil_mode=True)
    padded = F.avg_pool2d(F.pad(x, (0, 0, 0, 1, 0, 1)).permute(0, 3, 1, 2), 2)
    assert (pooled - padded).abs().max() > 1e-2
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(('num_heads', 'alpha', 'split'), [
    (12, 0.9, (10, 2)), (12, 0.7, (8, 4)), (12, 0.2, (2, 10)), (12, 0., (0, 12)), (12, 1., (12, 0)), (2, 0.5, (1, 1)),
])
def test_head_split_is_the_official_int(num_heads, alpha, split):
    assert hilo_head_split(num_heads, alpha, 2) == split
    m = HiLoAttentionCl(num_heads * 8, num_heads=num_heads, window_size=2, alpha=alpha)
    assert (m.l_heads, m.h_heads) == split
    names = {n.split('.')[0] for n, _ in m.named_parameters()}
    assert names == {*(['l_q', 'l_kv', 'l_proj'] if split[0] else []), *(['h_qkv', 'h_proj'] if split[1] else [])}


def test_backward_on_odd_map():
    m = _layer(alpha=0.5).float().train()
    x = torch.randn(2, 7, 5, 48, requires_grad=True)
    m(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.parametrize(('kwargs', 'match'), [
    (dict(alpha=-0.1), 'alpha'), (dict(alpha=1.5), 'alpha'), (dict(alpha=float('nan')), 'alpha'),
    (dict(alpha='0.5'), 'alpha'), (dict(alpha=True), 'alpha'),
    (dict(window_size=0), 'window_size'), (dict(window_size=2.0), 'window_size'),
    (dict(num_heads=5), 'num_heads'), (dict(qk_scale=-1.), 'qk_scale'), (dict(attn_drop=1.), 'attn_drop'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HiLoAttentionCl(32, **{'num_heads': 4, **kwargs})


def test_bad_input():
    m = HiLoAttentionCl(32, num_heads=4)
    with pytest.raises(ValueError, match=r'\[B, H, W, 32\]'):
        m(torch.randn(2, 16, 32))
    with pytest.raises(ValueError, match=r'\[B, H, W, 32\]'):
        m(torch.randn(2, 4, 4, 16))
