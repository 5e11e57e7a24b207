"""LITv2: exact official parameter counts (variants and the alpha ablation), the checkpoint filter, options.

The official logits are checked in ``test_official_fixtures.py``; the timm contract in ``test_contract.py``; the
GMACs of the README rows in ``test_gmacs.py``.
"""
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import zoo  # noqa: F401  (registers the models)
from zoo.layers import DeformTokenMergeCl, HiLoAttentionCl
from zoo.models.litv2 import LITv2Cfg, checkpoint_filter_fn

FIXTURES = Path(__file__).resolve().parents[2] / 'fixtures'

# sum(p.numel()) of the official classification model (ziplab/LITv2 @7501c86, 1000 classes), as recorded in the
# project's model anchors (paper_table.csv)
OFFICIAL_PARAMS = {
    'litv2_small': 27_844_000,
    'litv2_medium': 48_830_368,
    'litv2_base': 86_520_704,
    'litv2_base_384': 86_520_704,
}
# the README's alpha ablation of LITv2-S (released as v1.1/alpha_*.pth): Lo-Fi share -> official parameter count
ALPHA_PARAMS = {0.0: 28_089_760, 0.2: 27_844_000, 0.4: 27_696_544, 0.5: 27_647_392, 0.7: 27_696_544,
                0.9: 27_844_000, 1.0: 28_089_760}
MICRO = dict(num_classes=10, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2), local_ws=(0, 2, 2, 1),
             mlp_ratio=2., alpha=0.5)


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_official_param_count(name):
    assert _params(timm.create_model(name, device='meta')) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('alpha', list(ALPHA_PARAMS))
def test_alpha_ablation_param_count(alpha):
    model = timm.create_model('litv2_small', device='meta', alpha=alpha)
    assert _params(model) == ALPHA_PARAMS[alpha]
    attn = model.stages[2].blocks[0].attn
    assert attn.l_heads == int(12 * alpha) and attn.h_heads == 12 - int(12 * alpha)
    # stage 4 (window 1) is plain MSA with every head, whatever alpha
    last = model.stages[3].blocks[0].attn
    assert (last.l_heads, last.h_heads) == (24, 0)


def test_architecture_of_small():
    model = timm.create_model('litv2_small', device='meta')
    # stages 1-2: MLP-only blocks, no attention and no norm1; stages 3-4: HiLo with windows 2 and 1
    for i in (0, 1):
        for block in model.stages[i].blocks:
            assert block.attn is None and not hasattr(block, 'norm1')
    for i, ws in ((2, 2), (3, 1)):
        for block in model.stages[i].blocks:
            assert isinstance(block.attn, HiLoAttentionCl) and block.attn.ws == ws
    assert isinstance(model.stages[0].downsample, torch.nn.Identity)
    for i in (1, 2, 3):
        merge = model.stages[i].downsample
        assert isinstance(merge, DeformTokenMergeCl) and isinstance(merge.norm, torch.nn.BatchNorm2d)
    assert [f['num_chs'] for f in model.feature_info] == [96, 192, 384, 768]
    assert [f['reduction'] for f in model.feature_info] == [4, 8, 16, 32]
    assert [n for n, _ in model.offset_params()] == [
        f'stages.{i}.downsample.dconv.conv_offset.{p}' for i in (1, 2, 3) for p in ('weight', 'bias')]


def test_fresh_merging_is_a_plain_conv():
    """Offsets start at zero (the official init): a fresh deformable token merging is conv2x2/s2 -> BN -> GELU."""
    merge = DeformTokenMergeCl(8, 16).eval()
    x = torch.randn(2, 6, 10, 8)
    conv = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), merge.dconv.weight, merge.dconv.bias, stride=2)
    ref = torch.nn.functional.gelu(merge.norm(conv)).permute(0, 2, 3, 1)
    torch.testing.assert_close(merge(x), ref)


def _official_micro():
    return load_file(str(FIXTURES / 'litv2_micro.safetensors'))


def test_filter_renames_official_keys():
    official = _official_micro()
    model = timm.create_model('litv2_test', **MICRO)
    out = checkpoint_filter_fn(official, model)
    assert set(out) == set(model.state_dict())
    # the merging that ends official stage i starts our stage i + 1; its BatchNorm is 'norm'
    assert out['stages.1.downsample.dconv.weight'] is official['layers.0.downsample.dconv.weight']
    assert out['stages.3.downsample.dconv.conv_offset.bias'] is official['layers.2.downsample.dconv.conv_offset.bias']
    assert out['stages.2.downsample.norm.running_var'] is official['layers.1.downsample.norm_layer.running_var']
    assert out['stages.0.blocks.0.mlp.dwconv.weight'] is official['layers.0.blocks.0.mlp.dwconv.dwconv.weight']
    assert out['stages.2.blocks.0.attn.h_qkv.weight'] is official['layers.2.blocks.0.attn.h_qkv.weight']
    assert out['stem.proj.weight'] is official['patch_embed.proj.weight']
    assert out['head.fc.bias'] is official['head.bias']
    model.load_state_dict(out)


def test_filter_unwraps_and_passes_native_layout():
    official = _official_micro()
    model = timm.create_model('litv2_test', **MICRO)
    wrapped = checkpoint_filter_fn({'model': {f'module.{k}': v for k, v in official.items()}}, model)
    assert set(wrapped) == set(model.state_dict())
    native = model.state_dict()
    assert checkpoint_filter_fn(native, model).keys() == native.keys()


def test_filter_rejects_other_architectures():
    official = _official_micro()
    with pytest.raises(ValueError, match='missing keys'):
        checkpoint_filter_fn({k: v for k, v in official.items() if 'l_kv' not in k},
                             timm.create_model('litv2_test', **MICRO))
    # alpha 0 has no Lo-Fi projections: an alpha-0.5 checkpoint does not fit
    with pytest.raises(ValueError, match='unexpected keys'):
        checkpoint_filter_fn(official, timm.create_model('litv2_test', **dict(MICRO, alpha=0.)))


def test_pretrained_cfgs():
    urls = {n: timm.get_pretrained_cfg(f'{n}.in1k').url for n in OFFICIAL_PARAMS}
    assert urls == {n: f'https://github.com/ziplab/LITv2/releases/download/v1.0/{f}.pth'
                    for n, f in zip(OFFICIAL_PARAMS, ('litv2_s', 'litv2_m', 'litv2_b', 'litv2_b_384'))}
    cfg = timm.get_pretrained_cfg('litv2_base_384.in1k')
    assert cfg.input_size == (3, 384, 384) and cfg.crop_pct == 1.0


@pytest.mark.parametrize('size', [(37, 45), (64, 20), (4, 4), (1, 1)])
def test_any_input_size(size):
    model = timm.create_model('litv2_test').eval()
    feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    expected = -(-size[0] // 4), -(-size[1] // 4)
    for i, f in enumerate(feats):
        assert tuple(f.shape[2:]) == tuple(max(e // 2 ** i, 1) for e in expected)


def test_options():
    model = timm.create_model('litv2_test', local_ws=(0, 0, 3, 1), alpha=0.)
    assert model.stages[1].blocks[0].attn is None
    assert model.stages[2].blocks[0].attn.ws == 3 and model.stages[2].blocks[0].attn.l_heads == 0
    model = timm.create_model('litv2_test', drop_path_rate=0.2)
    assert model.stages[-1].blocks[-1].drop_path2.drop_prob == pytest.approx(0.2)


@pytest.mark.parametrize(('kwargs', 'error', 'match'), [
    (dict(alpha=1.5), ValueError, 'alpha'),
    (dict(alpha=-0.5), ValueError, 'alpha'),
    (dict(local_ws=(0, 2, 2)), ValueError, 'local_ws'),
    (dict(local_ws=(0, -1, 2, 1)), ValueError, 'local_ws'),
    (dict(num_heads=(1, 3, 2, 4)), ValueError, 'num_heads'),
    (dict(depths=(1, 0, 1, 1)), ValueError, 'depths'),
    (dict(embed_dim=0), ValueError, 'embed_dim'),
    (dict(window=2), TypeError, 'window'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        timm.create_model('litv2_test', **kwargs)


def test_cfg_is_frozen_and_validated():
    with pytest.raises(ValueError, match='mlp_ratio'):
        LITv2Cfg(mlp_ratio=0.)
    assert LITv2Cfg().dims == (96, 192, 384, 768)
