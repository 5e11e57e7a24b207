"""Bi-level routing attention layers against direct computations of the official math.

The direct versions below loop over regions and heads in float64 and follow the semantics of the two official modules
(rayleizhu/BiFormer ``ops/bra_legacy.py`` and ``ops/bra_nchw.py``) as the project's kernel anchors describe them; the
layers run in float64 too, so the top-k choices agree.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from zoo.layers.routing import BiLevelRoutingAttention, BiLevelRoutingAttention2d, RegionRouter


def _attend(q, k, v, scale):
    """Softmax attention of the query rows ``q [M, d]`` over the key rows ``k [N, d]``."""
    return torch.softmax((q @ k.T) * scale, dim=-1) @ v


def direct_legacy(layer: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Legacy BRA: pad before qkv, region means, scaled routing, per-head attention, LePE on v, wo, crop."""
    B, H, W, C = x.shape
    n, qk, heads = layer.n_win, layer.qk_dim, layer.num_heads
    Hp, Wp = math.ceil(H / n) * n, math.ceil(W / n) * n
    rh, rw = Hp // n, Wp // n
    xp = x.new_zeros(B, Hp, Wp, C)
    xp[:, :H, :W] = x
    qkv = layer.qkv.qkv(xp)
    q, k, v = qkv[..., :qk], qkv[..., qk:2 * qk], qkv[..., 2 * qk:]

    def region(t, r):
        i, j = divmod(r, n)
        return t[:, i * rh:(i + 1) * rh, j * rw:(j + 1) * rw].reshape(B, rh * rw, -1)

    n_r = n * n
    q_r = torch.stack([region(q, r).mean(1) for r in range(n_r)], 1)
    k_r = torch.stack([region(k, r).mean(1) for r in range(n_r)], 1)
    if not layer.router.diff_routing:
        q_r, k_r = q_r.detach(), k_r.detach()
    q_r, k_r = layer.router.emb(q_r), layer.router.emb(k_r)
    logits = (q_r * layer.scale) @ k_r.transpose(1, 2)
    top, idx = torch.topk(logits, layer.topk, dim=-1)
    weight = top.softmax(-1)
    if layer.routing_mode == 'hard':
        weight = 1 + (weight - weight.detach())

    dq, dv = qk // heads, C // heads
    out = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    for b in range(B):
        for r in range(n_r):
            keys, vals = [], []
            for t, s in enumerate(idx[b, r].tolist()):
                w = weight[b, r, t] if layer.routing_mode != 'none' else 1.
                keys.append(region(k, s)[b] * w)
                vals.append(region(v, s)[b] * w)
            keys, vals = torch.cat(keys), torch.cat(vals)
            qs = region(q, r)[b]
            o = torch.cat([
                _attend(qs[:, h * dq:(h + 1) * dq], keys[:, h * dq:(h + 1) * dq], vals[:, h * dv:(h + 1) * dv],
                        layer.scale)
                for h in range(heads)], dim=-1)
            i, j = divmod(r, n)
            out[b, i * rh:(i + 1) * rh, j * rw:(j + 1) * rw] = o.reshape(rh, rw, C)
    k_lepe = layer.lepe.weight.shape[-1]
    lepe = F.conv2d(v.permute(0, 3, 1, 2), layer.lepe.weight, layer.lepe.bias, padding=k_lepe // 2, groups=C)
    out = out + lepe.permute(0, 2, 3, 1)
    return layer.wo(out)[:, :H, :W]


def direct_nchw(layer: BiLevelRoutingAttention2d, x: torch.Tensor, mask_pads: bool = False) -> torch.Tensor:
    """nchw BRA: region size from the unpadded map, means over valid tokens, unscaled routing, zero-padded keys.

    ``mask_pads=True`` drops the padded keys instead (not the official semantics; used to show the difference).
    """
    B, C, H, W = x.shape
    n, heads = layer.n_win, layer.num_heads
    rh, rw = max(1, H // n), max(1, W // n)
    gh, gw = math.ceil(H / rh), math.ceil(W / rw)
    q, k, v = layer.qkv_linear(x).chunk(3, dim=1)

    def valid(t, r):
        i, j = divmod(r, gw)
        return t[:, :, i * rh:(i + 1) * rh, j * rw:(j + 1) * rw].flatten(2)  # [B, C, valid tokens]

    def padded(t, r):
        i, j = divmod(r, gw)
        out = t.new_zeros(B, C, rh, rw)
        part = t[:, :, i * rh:(i + 1) * rh, j * rw:(j + 1) * rw]
        out[:, :, :part.shape[2], :part.shape[3]] = part
        return out.flatten(2).transpose(1, 2)  # [B, rh*rw, C], zeros where the region overhangs the map

    def is_valid(r):
        i, j = divmod(r, gw)
        rows = torch.arange(i * rh, (i + 1) * rh)[:, None] < H
        cols = torch.arange(j * rw, (j + 1) * rw)[None, :] < W
        return (rows & cols).flatten()

    n_r = gh * gw
    q_r = torch.stack([valid(q, r).mean(-1) for r in range(n_r)], 1)
    k_r = torch.stack([valid(k, r).mean(-1) for r in range(n_r)], 1)
    idx = torch.topk(q_r @ k_r.transpose(1, 2), min(layer.topk, n_r), dim=-1).indices
    d = C // heads
    out = torch.zeros(B, C, gh * rh, gw * rw, dtype=x.dtype)
    for b in range(B):
        for r in range(n_r):
            keys = torch.cat([padded(k, s)[b] for s in idx[b, r].tolist()])
            vals = torch.cat([padded(v, s)[b] for s in idx[b, r].tolist()])
            if mask_pads:
                keep = torch.cat([is_valid(s) for s in idx[b, r].tolist()])
                keys, vals = keys[keep], vals[keep]
            qs = padded(q, r)[b]
            o = torch.cat([_attend(qs[:, h * d:(h + 1) * d], keys[:, h * d:(h + 1) * d], vals[:, h * d:(h + 1) * d],
                                   C ** -0.5) for h in range(heads)], dim=-1)
            i, j = divmod(r, gw)
            out[b, :, i * rh:(i + 1) * rh, j * rw:(j + 1) * rw] = o.T.reshape(C, rh, rw)
    out = out[:, :, :H, :W]
    if layer.lepe is not None:
        out = out + layer.lepe(v)
    return layer.output_linear(out)


def _perturb(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


LEGACY_CASES = [
    pytest.param((14, 14), dict(n_win=7, topk=4), id='14x14-divisible'),
    pytest.param((10, 17), dict(n_win=4, topk=3), id='10x17-padded'),
    pytest.param((3, 2), dict(n_win=2, topk=2), id='3x2-padded'),
    pytest.param((1, 1), dict(n_win=3, topk=2), id='1x1-padded-to-grid'),
    pytest.param((9, 9), dict(n_win=3, topk=2, soft_routing=True), id='9x9-soft'),
    pytest.param((7, 11), dict(n_win=3, topk=4, soft_routing=True, diff_routing=True, param_routing=True),
                 id='7x11-soft-param'),
    pytest.param((8, 8), dict(n_win=4, topk=5, qk_dim=8, side_dwconv=3), id='8x8-qk_dim8'),
]


@pytest.mark.parametrize(('size', 'kwargs'), LEGACY_CASES)
def test_legacy_bra_matches_direct(size, kwargs):
    kwargs = dict(kwargs)
    layer = _perturb(BiLevelRoutingAttention(16, num_heads=2, side_dwconv=kwargs.pop('side_dwconv', 5), **kwargs))
    layer = layer.double()
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    with torch.no_grad():
        out = layer(x)
        ref = direct_legacy(layer, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize('soft', [False, True], ids=['none', 'soft'])
def test_legacy_bra_gradients_match_direct(soft):
    layer = _perturb(BiLevelRoutingAttention(16, 2, n_win=3, topk=3, side_dwconv=3, soft_routing=soft,
                                             diff_routing=soft)).double()
    x = torch.randn(1, 8, 7, 16, dtype=torch.float64, requires_grad=True)
    params = [x] + list(layer.parameters())
    grads = torch.autograd.grad(layer(x).square().sum(), params)
    ref = torch.autograd.grad(direct_legacy(layer, x).square().sum(), params)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, atol=1e-9, rtol=1e-8)


def test_legacy_hard_routing_is_straight_through():
    torch.manual_seed(0)
    hard = _perturb(BiLevelRoutingAttention(16, 2, n_win=3, topk=2, diff_routing=True, param_routing=True)).double()
    none = BiLevelRoutingAttention(16, 2, n_win=3, topk=2).double()
    state = {k: v for k, v in hard.state_dict().items() if not k.startswith('router.emb')}
    none.load_state_dict(state)
    assert hard.routing_mode == 'hard' and none.routing_mode == 'none'
    x = torch.randn(2, 6, 6, 16, dtype=torch.float64)
    # identical forward: the routing Linear is the identity here, so both route alike
    with torch.no_grad():
        hard.router.emb.weight.copy_(torch.eye(16))
        hard.router.emb.bias.zero_()
    torch.testing.assert_close(hard(x), none(x), atol=1e-12, rtol=1e-12)
    # the gradient reaches the router, as the direct straight-through version says
    params = list(hard.router.parameters()) + [hard.qkv.qkv.weight]
    grads = torch.autograd.grad(hard(x).square().sum(), params)
    ref = torch.autograd.grad(direct_legacy(hard, x).square().sum(), params)
    assert grads[0].abs().sum() > 0
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, atol=1e-9, rtol=1e-8)


NCHW_CASES = [
    pytest.param((14, 14), dict(n_win=7, topk=4), id='14x14-divisible'),
    pytest.param((30, 45), dict(n_win=7, topk=4), id='30x45-grid-8x8'),
    pytest.param((9, 11), dict(n_win=4, topk=3), id='9x11-padded'),
    pytest.param((3, 5), dict(n_win=7, topk=16), id='3x5-below-n_win-topk-clamped'),
]


@pytest.mark.parametrize(('size', 'kwargs'), NCHW_CASES)
def test_nchw_bra_matches_direct(size, kwargs):
    layer = _perturb(BiLevelRoutingAttention2d(16, num_heads=2, side_dwconv=5, **kwargs)).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        out = layer(x)
        ref = direct_nchw(layer, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-9)


def test_nchw_bra_gradients_match_direct():
    layer = _perturb(BiLevelRoutingAttention2d(16, 2, n_win=3, topk=3, side_dwconv=3)).double()
    x = torch.randn(1, 16, 8, 7, dtype=torch.float64, requires_grad=True)
    params = [x] + list(layer.parameters())
    grads = torch.autograd.grad(layer(x).square().sum(), params)
    ref = torch.autograd.grad(direct_nchw(layer, x).square().sum(), params)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, atol=1e-9, rtol=1e-8)


def test_nchw_padded_keys_are_unmasked():
    # 9 rows with n_win=4: region height 2, five region rows, the last one half padding; every region is routed to
    # every region, so each query sees the zero keys of the overhanging row (logit 0, value 0)
    layer = _perturb(BiLevelRoutingAttention2d(8, 1, n_win=4, topk=20, side_dwconv=0)).double()
    x = torch.randn(1, 8, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        out = layer(x)
        torch.testing.assert_close(out, direct_nchw(layer, x))
        masked = direct_nchw(layer, x, mask_pads=True)
    assert (out - masked).abs().max() > 1e-3
    assert layer.router.scale is None


@pytest.mark.parametrize('cls', [BiLevelRoutingAttention, BiLevelRoutingAttention2d])
def test_fused_and_gather_paths_agree(cls):
    layer = _perturb(cls(32, 4, n_win=3, topk=3)).eval()
    x = torch.randn(2, 10, 13, 32) if cls is BiLevelRoutingAttention else torch.randn(2, 32, 10, 13)
    with torch.no_grad():
        fused = layer(x)
        layer.fused_attn = False
        gathered = layer(x)
    torch.testing.assert_close(fused, gathered, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('cls', [BiLevelRoutingAttention, BiLevelRoutingAttention2d])
def test_fused_path_does_not_read_the_indices_on_the_host(cls, monkeypatch):
    """The router's indices are a topk over the regions, in range by construction: the layer skips the functional
    API's range check, which on CUDA would synchronise with the device in every block."""
    layer = cls(32, 4, n_win=3, topk=3).eval()
    x = torch.randn(2, 10, 13, 32) if cls is BiLevelRoutingAttention else torch.randn(2, 32, 10, 13)
    monkeypatch.setattr(torch, 'aminmax', lambda t: pytest.fail('the layer read r_idx on the host'))
    with torch.no_grad():
        layer(x)


@pytest.mark.parametrize(('mode', 'kwargs', 'ref'), [
    ('avgpool', dict(kv_downsample_ratio=2), lambda t: F.avg_pool2d(t, 2)),
    ('maxpool', dict(kv_downsample_ratio=2), lambda t: F.max_pool2d(t, 2)),
    ('ada_avgpool', dict(kv_per_win=3), lambda t: F.adaptive_avg_pool2d(t, 3)),
    ('ada_maxpool', dict(kv_per_win=1), lambda t: F.adaptive_max_pool2d(t, 1)),
])
def test_kv_downsample_modes(mode, kwargs, ref):
    """Each region's key/value tokens pooled as the official ``kv_down`` module pools them (NCHW, per region)."""
    layer = BiLevelRoutingAttention(16, 2, n_win=3, topk=2, kv_downsample_mode=mode, **kwargs)
    kv = torch.randn(2, 9, 4, 5, 16)
    expected = ref(kv.reshape(18, 4, 5, 16).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2).reshape(2, 9, -1, 16)
    torch.testing.assert_close(layer._kv_down(kv), expected)
    x = torch.randn(1, 12, 12, 16)
    assert layer(x).shape == x.shape


def test_router_clamps_topk_and_detaches():
    router = RegionRouter(8, topk=5, scale=0.5)
    q_r = torch.randn(2, 3, 8, requires_grad=True)
    weight, idx = router(q_r, torch.randn(2, 3, 8))
    assert idx.shape == (2, 3, 3) and weight.shape == (2, 3, 3)
    assert not weight.requires_grad


@pytest.mark.parametrize(('build', 'match'), [
    (lambda: BiLevelRoutingAttention(16, 3), 'num_heads'),
    (lambda: BiLevelRoutingAttention(16, 2, n_win=2, topk=5), 'topk'),
    (lambda: BiLevelRoutingAttention(16, 4, qk_dim=6), 'num_heads'),
    (lambda: BiLevelRoutingAttention(16, 2, kv_downsample_mode='fracpool'), 'kv_downsample_mode'),
    (lambda: BiLevelRoutingAttention(16, 2, param_routing=True), 'param_routing'),
    (lambda: BiLevelRoutingAttention(16, 2, param_attention='none'), 'param_attention'),
    (lambda: BiLevelRoutingAttention(16, 2, side_dwconv=4), 'side_dwconv'),
    (lambda: BiLevelRoutingAttention2d(16, 2, n_win=0), 'n_win'),
    (lambda: BiLevelRoutingAttention2d(16, 2, topk=0), 'topk'),
])
def test_constructor_errors_name_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_forward_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r'\[B, H, W, 16\]'):
        BiLevelRoutingAttention(16, 2)(torch.randn(1, 7, 7, 8))
    with pytest.raises(ValueError, match=r'\[B, 16, H, W\]'):
        BiLevelRoutingAttention2d(16, 2)(torch.randn(1, 8, 7, 7))


def test_official_parameter_names():
    legacy = BiLevelRoutingAttention(64, 2, n_win=7, topk=1, side_dwconv=5)
    assert {k: tuple(v.shape) for k, v in legacy.state_dict().items()} == {
        'lepe.weight': (64, 1, 5, 5), 'lepe.bias': (64,), 'qkv.qkv.weight': (192, 64), 'qkv.qkv.bias': (192,),
        'wo.weight': (64, 64), 'wo.bias': (64,)}
    nchw = BiLevelRoutingAttention2d(96, 3, side_dwconv=5)
    assert {k: tuple(v.shape) for k, v in nchw.state_dict().items()} == {
        'lepe.weight': (96, 1, 5, 5), 'lepe.bias': (96,), 'qkv_linear.weight': (288, 96, 1, 1),
        'qkv_linear.bias': (288,), 'output_linear.weight': (96, 96, 1, 1), 'output_linear.bias': (96,)}
    assert set(BiLevelRoutingAttention(16, 2, diff_routing=True, param_routing=True).state_dict()) >= {
        'router.emb.weight', 'router.emb.bias'}


def test_meta_device_and_dtype():
    layer = BiLevelRoutingAttention(32, 2, device='meta', dtype=torch.bfloat16)
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in layer.parameters())
    assert all(p.is_meta for p in BiLevelRoutingAttention2d(32, 2, device='meta').parameters())


@pytest.mark.parametrize('size, region', [((7, 9), (2, 3)), ((8, 8), (2, 2)), ((5, 3), (1, 1)), ((13, 11), (4, 3))])
def test_region_means_equal_ceil_mode_avg_pool(size, region):
    """The exported form of the nchw BRA's region descriptors (pad, reshape, sums over valid-token counts) equals
    ``avg_pool2d(ceil_mode=True, count_include_pad=False)``, including the partial regions at the bottom/right."""
    from zoo.layers.routing import _region_means
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    ref = F.avg_pool2d(x, region, ceil_mode=True, count_include_pad=False)
    torch.testing.assert_close(_region_means(x, region), ref, rtol=0, atol=1e-12)
