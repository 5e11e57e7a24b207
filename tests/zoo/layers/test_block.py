"""PreNormBlockCl / PreNormBlock2d against timm's vision_transformer Block and against direct compositions."""
from functools import partial

import pytest
import torch
import torch.nn as nn
from timm.layers import Attention, ConvMlp, LayerNorm2d, Mlp
from timm.models.vision_transformer import Block

from zoo.layers import ConvFfnCl, DwConv2d, DwConvCl, PreNormBlock2d, PreNormBlockCl


def _perturb(module: nn.Module) -> nn.Module:
    """Random values in every parameter (layer scales and norms included), so each one matters."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module


@pytest.mark.parametrize('init_values', [None, 0.7], ids=['no-ls', 'ls'])
@pytest.mark.parametrize('drop_path', [0., 0.3], ids=['dp0', 'dp-eval'])
def test_equals_timm_vit_block_with_copied_weights(init_values, drop_path):
    ref = _perturb(Block(32, num_heads=4, qkv_bias=True, init_values=init_values, drop_path=drop_path)).eval()
    block = PreNormBlockCl(
        32, attn_layer=Attention, attn_kwargs=dict(num_heads=4, qkv_bias=True), init_values=init_values,
        drop_path=drop_path, norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    # same parameter names: norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma
    block.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(block(x), ref(x), atol=1e-6, rtol=1e-6)


def test_norm_order_and_layer_scale_by_hand():
    block = _perturb(PreNormBlockCl(16, attn_layer=DwConvCl(16, 3), mlp_ratio=2., init_values=0.1)).eval()
    x = torch.randn(2, 5, 7, 16)
    y = x + block.ls1.gamma * block.attn(block.norm1(x))
    y = y + block.ls2.gamma * block.mlp(block.norm2(y))
    torch.testing.assert_close(block(x), y)
    assert sorted(n for n, _ in block.named_parameters()) == sorted([
        'norm1.weight', 'norm1.bias', 'attn.weight', 'attn.bias', 'ls1.gamma', 'norm2.weight', 'norm2.bias',
        'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight', 'mlp.fc2.bias', 'ls2.gamma'])
    assert block.mlp.fc1.out_features == 32


def test_layer_scale_per_branch_and_mlp_only_block():
    block = PreNormBlockCl(8, attn_layer=DwConvCl, attn_kwargs=dict(kernel_size=3), init_values=(None, 1e-5))
    assert isinstance(block.ls1, nn.Identity) and torch.equal(block.ls2.gamma, torch.full((8,), 1e-5))
    # LITv2's early blocks: MLP branch only, named norm2 / mlp
    mlp_only = _perturb(PreNormBlockCl(8, attn_layer=None, mlp_layer=ConvFfnCl)).eval()
    assert {n.split('.')[0] for n, _ in mlp_only.named_parameters()} == {'norm2', 'mlp'}
    x = torch.randn(1, 4, 6, 8)
    torch.testing.assert_close(mlp_only(x), x + mlp_only.mlp(mlp_only.norm2(x)))
    attn_only = PreNormBlockCl(8, attn_layer=DwConvCl(8), mlp_layer=None)
    assert attn_only.mlp is None and not hasattr(attn_only, 'norm2')


def test_block_2d_equals_channels_last_block():
    """NCHW norms, 1x1-conv MLP and LayerScale2d compute what the channels-last block computes on the permuted map."""
    norm = partial(nn.LayerNorm, eps=1e-6)
    cl = _perturb(PreNormBlockCl(12, attn_layer=DwConvCl(12, 3), mlp_layer=Mlp, init_values=0.3, norm_layer=norm))
    nchw = PreNormBlock2d(12, attn_layer=DwConv2d(12, 3), init_values=0.3)
    assert isinstance(nchw.norm1, LayerNorm2d) and isinstance(nchw.mlp, ConvMlp)
    state = {k: (v.view(*v.shape, 1, 1) if k.startswith('mlp.fc') and k.endswith('weight') else v)
             for k, v in cl.state_dict().items()}
    nchw.load_state_dict(state, strict=True)
    x = torch.randn(2, 5, 6, 12)
    torch.testing.assert_close(nchw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), cl(x), atol=1e-5, rtol=1e-5)


def test_drop_path_drops_whole_samples_in_training():
    block = PreNormBlockCl(8, attn_layer=DwConvCl(8), mlp_layer=None, drop_path=0.5).train()
    torch.manual_seed(3)
    x = torch.randn(64, 3, 3, 8)
    branch = block.attn(block.norm1(x))
    out = block(x)
    kept = [torch.allclose(out[i], x[i] + 2 * branch[i], atol=1e-5) for i in range(64)]
    dropped = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(k or d for k, d in zip(kept, dropped)) and any(kept) and any(dropped)


def test_block_builds_on_meta():
    block = PreNormBlockCl(8, attn_layer=Attention, attn_kwargs=dict(num_heads=2), init_values=1e-5, device='meta')
    assert all(p.is_meta for p in block.parameters())


@pytest.mark.parametrize(('kwargs', 'err', 'match'), [
    (dict(attn_layer=3), TypeError, 'attn_layer'),
    (dict(attn_layer=DwConvCl, mlp_layer='mlp'), TypeError, 'mlp_layer'),
    (dict(attn_layer=DwConvCl(8), attn_kwargs=dict(kernel_size=3)), ValueError, 'attn_kwargs'),
    (dict(attn_layer=None, attn_kwargs=dict(num_heads=2)), ValueError, 'attn_kwargs'),
    (dict(attn_layer=DwConvCl, init_values=(1., 1., 1.)), ValueError, 'init_values'),
    (dict(attn_layer=DwConvCl, drop_path=1.), ValueError, 'drop_path'),
    (dict(attn_layer=DwConvCl, mlp_ratio=0), ValueError, 'mlp_ratio'),
    (dict(attn_layer=DwConvCl, norm_layer=None), TypeError, 'norm_layer'),
])
def test_constructor_errors_name_the_argument(kwargs, err, match):
    with pytest.raises(err, match=match):
        PreNormBlockCl(8, **kwargs)
