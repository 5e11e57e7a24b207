"""Flowformer classifier: fidelity numbers, family semantics and the checkpoint filter.

The timm contract is checked for every model in test_contract.py; official logits in test_official_fixtures.py."""
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from zoo.layers import FlowAttention
from zoo.models._flops import count_gmacs
from zoo.models.flowformer import Flowformer, FlowformerCfg, checkpoint_filter_fn, model_cfgs

FIXTURES = Path(__file__).resolve().parents[2] / 'fixtures'
# thuml/Flowformer @61f5d8c, Flowformer_CV/main.py config (paper_table.csv: params and fvcore GMACs at 224 px)
OFFICIAL_PARAMS = 43_311_304
OFFICIAL_GMACS = 6.892
MICRO = dict(num_classes=10, embed_dims=(12, 24, 36, 48), depths=(1, 1, 2, 1), num_heads=12, mlp_ratio=2., img_size=64)


def _official_shapes():
    with open(FIXTURES / 'flowformer_official.json') as f:
        table = json.load(f)['cases']['flowformer_cv']['shapes']
    return {k: tuple(int(s) for s in v.split('x')) if v else () for k, v in table.items()}


def test_params_and_gmacs_match_official():
    model = timm.create_model('flowformer_cv', device='meta')
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    assert abs(count_gmacs(model) / OFFICIAL_GMACS - 1) < 1e-3


def test_architecture_facts():
    """12 heads in every stage, layer scale on the MLP branch only (init 1e-5), no norm in the stems."""
    model = timm.create_model('flowformer_cv', device='meta')
    assert model.stem.grid_size == (56, 56) and model.stem.pos_embed.shape == (1, 3136, 96)
    assert isinstance(model.stem.norm, torch.nn.Identity)
    for i, stage in enumerate(model.stages):
        if i:
            assert isinstance(stage.downsample.norm, torch.nn.Identity) and stage.downsample.proj.stride == (2, 2)
        for block in stage.blocks:
            assert isinstance(block.attn, FlowAttention) and block.attn.num_heads == 12
            assert isinstance(block.ls1, torch.nn.Identity) and block.norm1.eps == 1e-6
    assert model_cfgs['flowformer_cv'].layer_scale == 1e-5
    real = timm.create_model('flowformer_test')
    gamma = real.stages[0].blocks[0].ls2.gamma
    torch.testing.assert_close(gamma, torch.full_like(gamma, 1e-5))


def test_official_state_dict_layout_converts_exactly():
    official = {k: torch.zeros(s) for k, s in _official_shapes().items()}
    official['total_ops'] = torch.zeros(1, dtype=torch.float64)  # thop entries of released files
    official['blocks.0.0.attn.total_params'] = torch.zeros(1, dtype=torch.float64)
    model = timm.create_model('flowformer_cv', device='meta')
    converted = checkpoint_filter_fn({'model': official}, model)
    assert set(converted) == set(model.state_dict())
    assert converted['stages.0.blocks.2.ls2.gamma'].shape == (96,)
    assert converted['stages.3.downsample.proj.weight'].shape == (768, 384, 2, 2)


def test_filter_maps_stages_and_resizes_pos_embed():
    official = load_file(str(FIXTURES / 'flowformer_micro.safetensors'))
    model = timm.create_model('flowformer_test', **MICRO)
    converted = checkpoint_filter_fn(official, model)
    torch.testing.assert_close(converted['stages.2.downsample.proj.weight'], official['patch_embed.2.proj.weight'])
    torch.testing.assert_close(converted['stages.2.blocks.1.ls2.gamma'], official['blocks.2.1.gamma'])
    # a model built for 96 px gets the 16x16 table resized to 24x24
    bigger = timm.create_model('flowformer_test', **dict(MICRO, img_size=96))
    resized = checkpoint_filter_fn(official, bigger)
    assert resized['stem.pos_embed'].shape == (1, 576, 12)
    bad = dict(official)
    bad['blocks.1.0.attn.qkv.weight'] = bad['blocks.1.0.attn.qkv.weight'][:, :-1]
    with pytest.raises(ValueError, match='shape mismatches.*qkv'):
        checkpoint_filter_fn(bad, model)


def test_other_sizes_resize_the_position_embedding():
    """Same weights at 64 px (the built size: table used as is) and 80x48 px (table resized; odd stage maps padded)."""
    model = timm.create_model('flowformer_test', **MICRO).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        stem = model.stem(x)
        torch.testing.assert_close(stem - model.stem.proj(x).permute(0, 2, 3, 1), model.stem.pos_embed.reshape(
            1, 16, 16, 12))
        out = model.forward_intermediates(torch.randn(1, 3, 80, 44), intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in out] == [(20, 11), (10, 6), (5, 3), (3, 2)]


def test_bad_arguments():
    with pytest.raises(ValueError, match='num_heads'):
        FlowformerCfg(num_heads=7)
    with pytest.raises(ValueError, match='layer_scale'):
        FlowformerCfg(layer_scale=0.)
    with pytest.raises(ValueError, match='embed_dims'):
        FlowformerCfg(embed_dims=(96, 192))
    with pytest.raises(ValueError, match=r'embed_dims must give one int >= 1 per stage'):
        FlowformerCfg(embed_dims=(96, 192, 384, 0))
    with pytest.raises(TypeError, match='num_heads must be one int'):
        FlowformerCfg(num_heads=(12, 12, 12, 12))
    with pytest.raises(TypeError, match='unexpected keyword'):
        Flowformer(model_cfgs['flowformer_test'], window_size=7)
    with pytest.raises(ValueError, match='img_size'):
        Flowformer(model_cfgs['flowformer_test'], img_size=0)
    model = timm.create_model('flowformer_test')
    with pytest.raises(ValueError, match='x must have shape'):
        model.stages[0].blocks[0].attn(torch.randn(1, 4, 4, 8))
