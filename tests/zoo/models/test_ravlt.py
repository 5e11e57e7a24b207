"""RAVLT models: fidelity numbers, per-stage settings and the checkpoint filter.

The timm contract is checked for every model in test_contract.py; GMACs of the README rows in test_gmacs.py; official
logits in test_official_fixtures.py."""
import json
import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from zoo.layers import RalaAttention2d
from zoo.models.ravlt import RAVLT, RavltCfg, checkpoint_filter_fn, model_cfgs

FIXTURES = Path(__file__).resolve().parents[2] / 'fixtures'
# sum(p.numel() for p in official_model.parameters()), 1000-class head, qhfan/RALA @a86314f (paper_table.csv)
OFFICIAL_PARAMS = {
    'ravlt_tiny': 14_897_768,
    'ravlt_small': 25_591_208,
    'ravlt_base': 48_241_288,
    'ravlt_large': 95_242_440,
}
# per stage: heads, layer-scale init (RALA.py builders)
OFFICIAL_STAGES = {
    'ravlt_tiny': ((1, 2, 4, 8), (1., 1., 1., 1.)),
    'ravlt_small': ((1, 2, 5, 8), (1., 1., 1., 1.)),
    'ravlt_base': ((1, 2, 6, 8), (1., 1., 1e-6, 1e-6)),
    'ravlt_large': ((1, 2, 7, 10), (1e-6, 1e-6, 1e-6, 1e-6)),
}


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _official_shapes(case='ravlt_tiny'):
    with open(FIXTURES / 'ravlt_official.json') as f:
        table = json.load(f)['cases'][case]['shapes']
    return {k: tuple(int(s) for s in v.split('x')) if v else () for k, v in table.items()}


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_param_count_matches_official(name):
    assert _params(timm.create_model(name, device='meta')) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('name', list(OFFICIAL_STAGES))
def test_per_stage_attention_heads_and_layer_scale(name):
    model = timm.create_model(name, device='meta')
    heads, inits = OFFICIAL_STAGES[name]
    assert model_cfgs[name].layer_scale == inits
    for i, stage in enumerate(model.stages):
        for block in stage.blocks:
            assert isinstance(block.attn, RalaAttention2d)
            assert block.attn.mode == ('rala' if i < 2 else 'softmax')  # official default flagss
            assert block.attn.num_heads == heads[i] and block.attn.head_dim % 4 == 0
            assert block.ls1.gamma.shape == block.ls2.gamma.shape == (block.dim,)
            assert block.attn.lepe.kernel_size == (5, 5) and block.pos.kernel_size == (3, 3)
            assert block.mlp.fc1.out_channels == int(3.5 * block.dim)
    assert model.norm.proj.out_channels == model.num_features == 1024


def test_layer_scale_init_per_stage():
    inits = (1., 0.5, 1e-6, None)
    model = timm.create_model('ravlt_test', layer_scale=inits)
    for stage, init in zip(model.stages, inits):
        for block in stage.blocks:
            if init is None:
                assert isinstance(block.ls1, torch.nn.Identity) and isinstance(block.ls2, torch.nn.Identity)
            else:
                for ls in (block.ls1, block.ls2):
                    torch.testing.assert_close(ls.gamma, torch.full_like(ls.gamma, init))


def test_official_state_dict_layout_converts_exactly():
    """Every official key (from the official key -> shape table) lands on a model key of the right shape."""
    shapes = _official_shapes()
    official = {k: torch.zeros(s, dtype=torch.long if k.endswith('num_batches_tracked') else torch.float32)
                for k, s in shapes.items()}
    model = timm.create_model('ravlt_tiny', device='meta')
    converted = checkpoint_filter_fn(official, model)
    assert set(converted) == set(model.state_dict())
    assert converted['head.fc.weight'].shape == (1000, 1024)
    assert converted['stages.0.blocks.0.ls1.gamma'].shape == (64,)
    assert 'stages.1.downsample.reduction.weight' in converted and 'stages.0.rope.angle' in converted


def test_filter_keys_planted_swaps_fail():
    """The filter maps the official downsampler of stage i to our stage i+1 and the head conv to norm.proj: a stored
    micro checkpoint with the two norms of a block swapped no longer loads the same model."""
    official = load_file(str(FIXTURES / 'ravlt_micro.safetensors'))
    model = timm.create_model('ravlt_test', num_classes=10, embed_dims=(8, 16, 24, 32), depths=(1, 1, 2, 1),
                              num_heads=(1, 2, 3, 4), mlp_ratio=2., head_hidden_size=32)
    converted = checkpoint_filter_fn(official, model)
    torch.testing.assert_close(converted['stages.1.downsample.reduction.weight'],
                               official['layers.0.downsample.reduction.weight'])
    torch.testing.assert_close(converted['norm.proj.weight'], official['proj.weight'])
    torch.testing.assert_close(converted['norm.bn.running_var'], official['norm.running_var'])
    torch.testing.assert_close(converted['stages.2.rope.angle'], official['layers.2.RoPE.angle'])
    bad = dict(official)
    del bad['layers.1.blocks.0.attn.qkvo.weight']
    with pytest.raises(ValueError, match='missing keys.*qkvo'):
        checkpoint_filter_fn(bad, model)


def test_native_and_wrapped_checkpoints(tmp_path):
    model = timm.create_model('ravlt_test').eval()
    native = model.state_dict()
    assert checkpoint_filter_fn(native, model).keys() == native.keys()
    # the released files hold 'model' and 'model_ema'; load_pretrained takes 'model' as the official evaluation
    official = {k: v for k, v in load_file(str(FIXTURES / 'ravlt_micro.safetensors')).items()}
    micro = dict(num_classes=10, embed_dims=(8, 16, 24, 32), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4),
                 mlp_ratio=2., head_hidden_size=32)
    target = timm.create_model('ravlt_test', **micro)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in official.items()}
    path = tmp_path / 'ravlt.pth'
    torch.save({'model': official, 'model_ema': ema, 'epoch': 3}, path)
    target.pretrained_cfg = dict(target.pretrained_cfg, num_classes=10)
    target.load_pretrained(str(path))
    torch.testing.assert_close(target.head.fc.weight, official['head.weight'].flatten(1).float())
    torch.testing.assert_close(target.stages[0].blocks[0].ls1.gamma,
                               official['layers.0.blocks.0.gamma_1'].flatten().float())


@pytest.mark.parametrize('size', [(32, 32), (70, 54), (45, 33)], ids=['32x32', '70x54', '45x33'])
def test_any_size(size):
    model = timm.create_model('ravlt_test').eval()
    with torch.no_grad():
        inter = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    for i, f in enumerate(inter):
        assert f.shape[-2:] == tuple(math.ceil(s / 2 ** (i + 2)) for s in size)


def test_16bit_autocast_forward_is_finite():
    model = timm.create_model('ravlt_test').eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    assert float((out.float() - ref).norm() / ref.norm()) < 5e-2


def test_bad_arguments():
    with pytest.raises(ValueError, match='num_heads'):
        RavltCfg(num_heads=(1, 2, 4, 7))
    with pytest.raises(ValueError, match='multiples of 4'):
        RavltCfg(embed_dims=(64, 128, 256, 510), num_heads=(1, 2, 4, 5))
    with pytest.raises(ValueError, match='attn_types'):
        RavltCfg(attn_types=('rala', 'rala', 'softmax', 'linear'))
    with pytest.raises(ValueError, match='layer_scale'):
        RavltCfg(layer_scale=(1., 1.))
    with pytest.raises(TypeError, match='unexpected keyword'):
        RAVLT(model_cfgs['ravlt_test'], window_size=7)
    with pytest.raises(ValueError, match='drop_path_rate'):
        RAVLT(model_cfgs['ravlt_test'], drop_path_rate=1.5)


@pytest.mark.parametrize('attn_type', ['rala', 'softmax'])
@pytest.mark.parametrize('batch_side', [(2, 8), (1, 2)], ids=['folded', 'scaled'])
def test_block_layer_scales_folded_into_the_last_convs(attn_type, batch_side):
    """The block passes ``ls1`` / ``ls2`` to the last 1x1 conv of each branch; values and every gradient (the layer
    scales' included) equal the block written as ``x + ls(branch(norm(x)))``, on maps where the scale is folded into
    the weights (16 pixels and more per input channel) and where it scales the output."""
    from zoo.layers import Rope2d
    from zoo.models.ravlt import RavltBlock
    torch.manual_seed(0)
    block = RavltBlock(16, num_heads=2, attn_type=attn_type).double()
    with torch.no_grad():
        block.ls1.gamma.uniform_(0.5, 1.5)
        block.ls2.gamma.uniform_(-1.5, -0.5)
    batch, side = batch_side
    x = torch.randn(batch, 16, side, side, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    rope = Rope2d(8).double()((side, side))

    def unfolded(x):
        x = block.pos(x)
        x = x + block.ls1(block.attn(block.norm1(x), rope))
        return x + block.ls2(block.mlp(block.norm2(x)))

    g = torch.randn(batch, 16, side, side, dtype=torch.float64)
    params = list(block.parameters())
    out, ref = block(x, rope), unfolded(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for got, expected in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
