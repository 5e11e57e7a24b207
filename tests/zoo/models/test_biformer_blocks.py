"""BiFormer's blocks (zoo.models.biformer): stage-4 attention with LePE and the blocks on the shared pre-norm block."""
import pytest
import timm
import torch
import torch.nn.functional as F

from zoo.layers import BiLevelRoutingAttention, BiLevelRoutingAttention2d, PreNormBlock2d, PreNormBlockCl
from zoo.models.biformer import AttentionLePE, AttentionLePE2d, BiFormerBlock, BiFormerBlock2d, checkpoint_filter_fn


def _perturb(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _attend(q, k, v, scale):
    return torch.softmax((q @ k.T) * scale, dim=-1) @ v


def direct_attention_lepe(layer, x_nhwc: torch.Tensor, lepe_on_v: bool) -> torch.Tensor:
    """Per-image, per-head softmax attention, LePE (depthwise conv) on x or v before ``proj``, written out."""
    B, H, W, C = x_nhwc.shape
    heads, d = layer.num_heads, C // layer.num_heads
    qkv = F.linear(x_nhwc.reshape(B, H * W, C), layer.qkv.weight.reshape(3 * C, C), layer.qkv.bias)
    q, k, v = qkv.split(C, dim=-1)
    out = torch.cat([
        torch.stack([_attend(q[b, :, h * d:(h + 1) * d], k[b, :, h * d:(h + 1) * d], v[b, :, h * d:(h + 1) * d],
                             d ** -0.5) for b in range(B)])
        for h in range(heads)], dim=-1).reshape(B, H, W, C)
    src = (v.reshape(B, H, W, C) if lepe_on_v else x_nhwc).permute(0, 3, 1, 2)
    k_lepe = layer.lepe.weight.shape[-1]
    lepe = F.conv2d(src, layer.lepe.weight, layer.lepe.bias, padding=k_lepe // 2, groups=C)
    out = out + lepe.permute(0, 2, 3, 1)
    return F.linear(out, layer.proj.weight.reshape(C, C), layer.proj.bias)


@pytest.mark.parametrize('fused', [True, False], ids=['sdpa', 'explicit'])
def test_attention_lepe_matches_direct(fused):
    x = torch.randn(2, 5, 6, 32, dtype=torch.float64)
    legacy = _perturb(AttentionLePE(32, num_heads=8)).double()
    nchw = _perturb(AttentionLePE2d(32, num_heads=8)).double()
    legacy.fused_attn = nchw.fused_attn = fused
    assert legacy.qkv.bias is None and nchw.qkv.bias is None
    with torch.no_grad():
        torch.testing.assert_close(legacy(x), direct_attention_lepe(legacy, x, lepe_on_v=False))
        out = nchw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        torch.testing.assert_close(out, direct_attention_lepe(nchw, x, lepe_on_v=True))


def test_biformer_blocks_compose():
    x = torch.randn(2, 16, 9, 7)
    block = _perturb(BiFormerBlock(16, 2, topk=2, n_win=3, mlp_ratio=2., layer_scale=0.5)).eval()
    assert isinstance(block, PreNormBlockCl) and isinstance(block.attn, BiLevelRoutingAttention)
    with torch.no_grad():
        y = x + F.conv2d(x, block.pos_embed.weight, block.pos_embed.bias, padding=1, groups=16)
        t = y.permute(0, 2, 3, 1)
        t = t + block.ls1.gamma * block.attn(block.norm1(t))
        t = t + block.ls2.gamma * block.mlp(block.norm2(t))
        torch.testing.assert_close(block(x), t.permute(0, 3, 1, 2))
    assert block.norm1.eps == 1e-6
    block2d = _perturb(BiFormerBlock2d(16, 2, topk=-1)).eval()
    assert isinstance(block2d, PreNormBlock2d)
    with torch.no_grad():
        t = x + block2d.attn(block2d.norm1(x))
        t = t + block2d.mlp(block2d.norm2(t))
        torch.testing.assert_close(block2d(x), t)
    assert block2d.pos_embed is None and isinstance(block2d.attn, AttentionLePE2d)
    assert block2d.mlp.fc1.weight.shape == (64, 16, 1, 1) and block2d.norm1.eps == 1e-6
    assert isinstance(BiFormerBlock2d(16, 2, topk=2, n_win=3).attn, BiLevelRoutingAttention2d)


def test_official_parameter_names():
    block = BiFormerBlock(64, 2, topk=1, pos_embed_kernel=3, layer_scale=1e-5)
    names = {k.split('.')[0] for k in block.state_dict()}
    assert names == {'pos_embed', 'norm1', 'attn', 'ls1', 'norm2', 'mlp', 'ls2'}
    assert {k: tuple(v.shape) for k, v in AttentionLePE(512).state_dict().items()} == {
        'qkv.weight': (1536, 512), 'proj.weight': (512, 512), 'proj.bias': (512,), 'lepe.weight': (512, 1, 5, 5),
        'lepe.bias': (512,)}


@pytest.mark.parametrize(('build', 'match'), [
    (lambda: AttentionLePE(16, 3), 'num_heads'),
    (lambda: AttentionLePE2d(16, 2, side_dwconv=2), 'side_dwconv'),
    (lambda: BiFormerBlock(16, 2, topk=-2), 'topk'),
    (lambda: BiFormerBlock2d(16, 2, pos_embed_kernel=2), 'pos_embed_kernel'),
])
def test_constructor_errors_name_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_meta_device():
    assert all(p.is_meta for p in BiFormerBlock2d(32, 2, device='meta').parameters())
    assert all(p.is_meta for p in BiFormerBlock(32, 2, topk=-1, device='meta').parameters())


@pytest.mark.parametrize('name', ['biformer_test', 'biformer_stl_nchw_test'])
def test_filter_upgrades_earlier_native_names(name):
    """Exports made before the shared stems and blocks (indexed ``stem.i`` / ``downsample.i``, ``gamma1/2``) load."""
    model = timm.create_model(name, layer_scale=0.1)
    conv = model.cfg.layout == 'conv'
    stem = {'conv1': 0, 'norm1': 1, 'conv2': 3, 'norm2': 4} if conv else {'proj': 0, 'norm': 1}
    down = {'reduction': 0, 'norm': 1} if conv else {'norm': 0, 'proj': 1}
    old = {}
    for key, value in model.state_dict().items():
        parts = key.split('.')
        if parts[0] == 'stem':
            parts[1] = str(stem[parts[1]])
        elif len(parts) > 3 and parts[2] == 'downsample':
            parts[3] = str(down[parts[3]])
        elif parts[-1] == 'gamma' and parts[-2] in ('ls1', 'ls2'):
            parts[-2:] = ['gamma' + parts[-2][-1]]
        old['.'.join(parts)] = value
    assert 'stem.0.weight' in old and any(k.endswith('.gamma1') for k in old)
    converted = checkpoint_filter_fn(old, model)
    assert converted.keys() == model.state_dict().keys()
    assert all(converted[k] is old_v for k, old_v in zip(model.state_dict(), old.values()))
