"""NAT / DiNAT / DiNAT_s / isotropic models: fidelity numbers, family semantics and the checkpoint filter.

The timm contract (classifier, features, intermediates, pruning, checkpointing, meta / dtype) is checked for every
model in test_contract.py."""
import math
import re

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
from zoo.models import nat, nat_isotropic
from zoo.models.nat import Nat, NatCfg, checkpoint_filter_fn
from zoo.models.nat_isotropic import NatIsotropic

# the hierarchical (zoo.models.nat) and isotropic (zoo.models.nat_isotropic) config tables
MODEL_CFGS = {**nat.model_cfgs, **nat_isotropic.model_cfgs}

# sum(p.numel() for p in official_model.parameters()), 1000-class head, from the official classification code
# (SHI-Labs/Neighborhood-Attention-Transformer @d334f5b) as recorded in the project's model anchors
OFFICIAL_PARAMS = {
    'nat_mini': 19_984_174,
    'nat_tiny': 27_901_582,
    'nat_small': 50_743_297,
    'nat_base': 89_769_652,
    'dinat_mini': 19_984_174,
    'dinat_tiny': 27_901_582,
    'dinat_small': 50_719_681,
    'dinat_base': 89_769_652,
    'dinat_large': 200_943_514,
    'dinat_large_384': 200_943_514,
    'dinat_large_384_11x11': 201_144_250,
    'dinat_s_tiny': 28_288_354,
    'dinat_s_small': 49_606_258,
    'dinat_s_base': 87_768_224,
    'dinat_s_large': 196_532_476,
    'dinat_s_large_384': 196_532_476,
    'nat_isotropic_small': 21_999_736,
    'dinat_isotropic_small': 21_999_736,
    'vitrpb_small': 22_080_376,
    'nat_isotropic_base': 86_465_800,
    'dinat_isotropic_base': 86_465_800,
    'vitrpb_base': 86_627_080,
}
# the ImageNet-22K entrypoints: same architecture, 21841-class head
IN22K = {'dinat_large_in22k': 'dinat_large', 'dinat_large_11x11_in22k': 'dinat_large_384_11x11',
         'dinat_s_large_in22k': 'dinat_s_large'}
TINY = ['nat_test', 'dinat_test', 'dinat_s_test', 'nat_isotropic_test', 'dinat_isotropic_test', 'vitrpb_test']
HIERARCHICAL_TINY = ['nat_test', 'dinat_test', 'dinat_s_test']
ISOTROPIC_TINY = ['nat_isotropic_test', 'dinat_isotropic_test', 'vitrpb_test']


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_param_count_matches_official(name):
    model = timm.create_model(name, device='meta')
    assert _params(model) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('name', list(IN22K))
def test_in22k_variants(name):
    model = timm.create_model(name, device='meta')
    assert model.num_classes == 21841
    dim = model.num_features
    assert _params(model) == OFFICIAL_PARAMS[IN22K[name]] + (21841 - 1000) * (dim + 1)


@pytest.mark.parametrize('name', TINY)
def test_rpb_tables_trained_without_weight_decay(name):
    model = timm.create_model(name, num_classes=10)
    out = model(torch.randn(2, *model.pretrained_cfg['input_size']))
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert model.no_weight_decay() == {n for n, _ in model.named_parameters() if n.endswith('.rpb')}
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in model.no_weight_decay())


@pytest.mark.parametrize('name', TINY)
@pytest.mark.parametrize('size', [(64, 64), (70, 54), (13, 9)], ids=['64x64', '70x54', '13x9'])
def test_tiny_variant_any_size(name, size):
    model = timm.create_model(name).eval()
    if name == 'vitrpb_test' and max(size) > 64:
        with pytest.raises(ValueError, match='img_size'):
            model(torch.randn(1, 3, *size))
        return
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, *size))
    reduction = model.feature_info[-1]['reduction']
    assert feats.shape == (1, math.ceil(size[0] / reduction), math.ceil(size[1] / reduction), model.num_features)


@pytest.mark.parametrize('name', ['nat_test', 'dinat_test', 'dinat_s_test', 'dinat_isotropic_test'])
def test_backends_agree(name, monkeypatch):
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 36, 28)
    outs = {}
    for backend in ('reference', 'torch'):
        monkeypatch.setenv('ZOO_NA_BACKEND', backend)
        with torch.no_grad():
            outs[backend] = model(x)
    torch.testing.assert_close(outs['torch'], outs['reference'], atol=1e-5, rtol=1e-4)


@pytest.mark.triton
def test_triton_backend_agrees_interpreted(monkeypatch):
    pytest.importorskip('triton')
    model = timm.create_model('dinat_test', num_classes=5).eval()
    x = torch.randn(1, 3, 16, 12)
    outs = {}
    for backend in ('reference', 'triton'):
        monkeypatch.setenv('ZOO_NA_BACKEND', backend)
        with torch.no_grad():
            outs[backend] = model(x)
    torch.testing.assert_close(outs['triton'], outs['reference'], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('name', HIERARCHICAL_TINY)
def test_features_only_hierarchical(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 48))
    # the stems and downsamplers pad: every stage rounds up
    assert [(f.shape[2], f.shape[3]) for f in feats] == [(64 // r, math.ceil(48 / r)) for r in (4, 8, 16, 32)]


def test_features_only_full_variant_strides():
    model = timm.create_model('dinat_large', features_only=True, device='meta')
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [192, 384, 768, 1536]


@pytest.mark.parametrize('name', ISOTROPIC_TINY)
def test_features_only_isotropic(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 4, 4]
    feats = model(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 8, 8)] * 3


def test_cfg_overlay_and_errors():
    model = timm.create_model('nat_test', kernel_size=5, drop_path_rate=0.1)
    assert model.stages[0].blocks[0].attn.rpb.shape[-1] == 9
    assert model.stages[-1].blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    with pytest.raises(TypeError, match='unexpected keyword'):
        timm.create_model('nat_test', window_size=7)
    with pytest.raises(ValueError, match='kernel_size'):
        timm.create_model('nat_test', kernel_size=4)
    with pytest.raises(ValueError, match='attn_drop'):
        timm.create_model('nat_test', attn_drop_rate=0.1)
    with pytest.raises(ValueError, match='num_heads'):
        NatCfg(embed_dim=16, depths=(1, 1), num_heads=(3, 2))
    with pytest.raises(ValueError, match='dilations'):
        NatCfg(depths=(1, 2), num_heads=(2, 4), dilations=((1,), (1,)))
    with pytest.raises(ValueError, match='stem'):
        NatCfg(stem='overlap')
    with pytest.raises(ValueError, match='isotropic'):
        Nat(NatCfg(depths=(2,), num_heads=(2,), isotropic=True))
    with pytest.raises(ValueError, match='drop_path_rate'):
        NatIsotropic(NatCfg(depths=(2,), num_heads=(2,), isotropic=True), drop_path_rate=1.5)


def test_dilation_schedules():
    cfgs = MODEL_CFGS
    assert cfgs['dinat_tiny'].dilations[:2] == ((1, 8, 1), (1, 4, 1, 4))
    assert cfgs['dinat_tiny'].dilations[2] == (1, 2) * 9 and cfgs['dinat_tiny'].dilations[3] == (1,) * 5
    assert cfgs['dinat_large_384'].dilations[:3] == ((1, 13, 1), (1, 6, 1, 6), (1, 3) * 9)
    assert cfgs['dinat_large_384_11x11'].dilations == cfgs['dinat_large'].dilations
    assert cfgs['dinat_s_large_384'].dilations == ((1, 13), (1, 6), (1, 3) * 9, (1, 1))
    assert cfgs['dinat_isotropic_small'].dilations == ((1, 2) * 6,)
    assert cfgs['nat_mini'].dilations is None
    assert [cfgs[n].layer_scale for n in ('nat_small', 'nat_base', 'dinat_small', 'dinat_base')] == [
        1e-5, 1e-5, None, 1e-5]


# official key templates (block indices collapsed to N), from the project's model anchors (nat_small with layer
# scale, dinat_s_tiny, vitrpb_small); `_expand` fills in the indices for a given architecture
TEMPLATE_NAT = """
patch_embed.proj.N.weight patch_embed.proj.N.bias patch_embed.norm.weight patch_embed.norm.bias
levels.N.blocks.N.gamma1 levels.N.blocks.N.gamma2
levels.N.blocks.N.norm1.weight levels.N.blocks.N.norm1.bias levels.N.blocks.N.attn.rpb
levels.N.blocks.N.attn.qkv.weight levels.N.blocks.N.attn.qkv.bias levels.N.blocks.N.attn.proj.weight
levels.N.blocks.N.attn.proj.bias levels.N.blocks.N.norm2.weight levels.N.blocks.N.norm2.bias
levels.N.blocks.N.mlp.fc1.weight levels.N.blocks.N.mlp.fc1.bias levels.N.blocks.N.mlp.fc2.weight
levels.N.blocks.N.mlp.fc2.bias levels.N.downsample.reduction.weight levels.N.downsample.norm.weight
levels.N.downsample.norm.bias norm.weight norm.bias head.weight head.bias
"""
TEMPLATE_DINAT_S = """
patch_embed.proj.weight patch_embed.proj.bias patch_embed.norm.weight patch_embed.norm.bias
layers.N.blocks.N.norm1.weight layers.N.blocks.N.norm1.bias layers.N.blocks.N.attn.rpb
layers.N.blocks.N.attn.qkv.weight layers.N.blocks.N.attn.qkv.bias layers.N.blocks.N.attn.proj.weight
layers.N.blocks.N.attn.proj.bias layers.N.blocks.N.norm2.weight layers.N.blocks.N.norm2.bias
layers.N.blocks.N.mlp.fc1.weight layers.N.blocks.N.mlp.fc1.bias layers.N.blocks.N.mlp.fc2.weight
layers.N.blocks.N.mlp.fc2.bias layers.N.downsample.reduction.weight layers.N.downsample.norm.weight
layers.N.downsample.norm.bias norm.weight norm.bias head.weight head.bias
"""
TEMPLATE_ISO = """
patch_embed.proj.weight patch_embed.proj.bias patch_embed.norm.weight patch_embed.norm.bias
layers.N.norm1.weight layers.N.norm1.bias layers.N.attn.rpb layers.N.attn.relative_position_index
layers.N.attn.qkv.weight layers.N.attn.qkv.bias layers.N.attn.proj.weight layers.N.attn.proj.bias
layers.N.norm2.weight layers.N.norm2.bias layers.N.mlp.fc1.weight layers.N.mlp.fc1.bias
layers.N.mlp.fc2.weight layers.N.mlp.fc2.bias norm.weight norm.bias head.weight head.bias
"""


def _expand(template: str, cfg: NatCfg):
    """Concrete official keys of ``cfg``: stem convs 0-1, stage i block j, downsamplers of stages 0..n-2."""
    for key in template.split():
        if key.endswith(('gamma1', 'gamma2')) and cfg.layer_scale is None:
            continue
        if key.endswith('relative_position_index') and cfg.attn != 'global_rpb':
            continue
        if key.startswith('patch_embed.proj.N.'):
            yield from (key.replace('N', str(n)) for n in range(2))
        elif '.blocks.N.' in key:
            for i, depth in enumerate(cfg.depths):
                yield from (key.replace('N', str(i), 1).replace('N', str(j), 1) for j in range(depth))
        elif '.downsample.' in key:
            yield from (key.replace('N', str(i)) for i in range(len(cfg.depths) - 1))
        elif key.startswith('layers.N.'):
            yield from (key.replace('N', str(j)) for j in range(cfg.depths[0]))
        else:
            yield key


def _official_shape(key: str, cfg: NatCfg):
    """Shape of an official tensor, from the official module definitions."""
    stage = int(re.match(r'^(?:levels|layers)\.(\d+)\.blocks\.', key).group(1)) if '.blocks.' in key else 0
    widths = [cfg.embed_dim * (1 if cfg.isotropic else 2 ** i) for i in range(len(cfg.depths))]
    dim, c0, heads = widths[stage], widths[0], cfg.num_heads[stage]
    hidden = int(dim * cfg.mlp_ratio)
    grid = cfg.img_size // cfg.patch_size
    if key.startswith('patch_embed.proj.'):
        if cfg.stem == 'conv':
            n = int(key.split('.')[2])
            cin, cout = ((3, c0 // 2), (c0 // 2, c0))[n]
            return (cout, cin, 3, 3) if key.endswith('weight') else (cout,)
        return (c0, 3, cfg.patch_size, cfg.patch_size) if key.endswith('weight') else (c0,)
    if key.startswith('patch_embed.norm.'):
        return (c0,)
    if '.downsample.' in key:
        i = int(key.split('.')[1])
        cin, cout = widths[i], widths[i + 1]
        if key.endswith('reduction.weight'):
            return (cout, cin, 3, 3) if cfg.downsample == 'conv' else (cout, 4 * cin)
        return (cout,) if cfg.downsample == 'conv' else (4 * cin,)
    if key.startswith('norm.'):
        return (widths[-1],)
    if key.startswith('head.'):
        return (1000, widths[-1]) if key.endswith('weight') else (1000,)
    suffix = key.split('.attn.')[-1] if '.attn.' in key else key.rsplit('.', 2)[-2] + '.' + key.rsplit('.', 1)[-1]
    if key.endswith('attn.rpb'):
        size = 2 * grid - 1 if cfg.attn == 'global_rpb' else 2 * cfg.kernel_size - 1
        return (heads, size, size)
    if key.endswith('relative_position_index'):
        return (grid * grid, grid * grid)
    return {
        'qkv.weight': (3 * dim, dim), 'qkv.bias': (3 * dim,), 'proj.weight': (dim, dim), 'proj.bias': (dim,),
        'fc1.weight': (hidden, dim), 'fc1.bias': (hidden,), 'fc2.weight': (dim, hidden), 'fc2.bias': (dim,),
    }.get(suffix, (dim,))


def official_state_dict(name: str, device='cpu'):
    """A synthetic official-layout state dict of ``name``: template keys expanded, random values (so a wrong mapping
    shows), or empty meta tensors for the full variants."""
    cfg = MODEL_CFGS[name]
    template = TEMPLATE_ISO if cfg.isotropic else TEMPLATE_NAT if cfg.stem == 'conv' else TEMPLATE_DINAT_S
    g = torch.Generator().manual_seed(0)
    out = {}
    for key in _expand(template, cfg):
        shape = _official_shape(key, cfg)
        if key.endswith('relative_position_index'):
            out[key] = torch.zeros(shape, dtype=torch.long, device=device)
        elif device == 'meta':
            out[key] = torch.empty(shape, device='meta')
        else:
            out[key] = torch.randn(shape, generator=g)
    return out


@pytest.mark.parametrize('name', ['nat_mini', 'nat_small', 'dinat_s_tiny', 'vitrpb_small', 'dinat_isotropic_base',
                                  'dinat_large_384_11x11'])
def test_filter_full_variants_key_sets(name):
    model = timm.create_model(name, device='meta')
    official = official_state_dict(name, device='meta')
    converted = checkpoint_filter_fn(official, model)
    assert set(converted) == set(model.state_dict())
    assert all(converted[k].shape == v.shape for k, v in model.state_dict().items())


@pytest.mark.parametrize('name', TINY)
@pytest.mark.parametrize('wrap', [None, 'model', 'state_dict'])
def test_filter_tiny_official_in_ours_out(name, wrap):
    model = timm.create_model(name)
    official = official_state_dict(name)
    converted = checkpoint_filter_fn({wrap: official} if wrap else official, model)
    model.load_state_dict(converted, strict=True)
    assert all(not k.startswith(('levels.', 'layers.')) for k in converted)
    if name in HIERARCHICAL_TINY:
        prefix = 'levels' if name in ('nat_test', 'dinat_test') else 'layers'
        reduction = official[f'{prefix}.1.downsample.reduction.weight']
        assert torch.equal(model.stages[2].downsample.reduction.weight, reduction)
        assert torch.equal(model.stages[1].blocks[0].attn.rpb, official[f'{prefix}.1.blocks.0.attn.rpb'])
    else:
        assert torch.equal(model.blocks[3].attn.qkv.weight, official['layers.3.attn.qkv.weight'])
    assert torch.equal(model.head.fc.weight, official['head.weight'])
    # a native dict comes back unchanged
    native = model.state_dict()
    again = checkpoint_filter_fn(native, model)
    assert again.keys() == native.keys() and all(again[k] is native[k] for k in native)


def test_pretrained_file_loads_official_layout(tmp_path):
    official = official_state_dict('dinat_s_test')
    path = tmp_path / 'official.pth'
    torch.save({'model': official}, path)
    model = timm.create_model('dinat_s_test', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.stages[3].downsample.reduction.weight, official['layers.2.downsample.reduction.weight'])
    # a new head for fine-tuning: the classifier is re-initialised, the rest is loaded
    model = timm.create_model(
        'dinat_s_test', pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.head.fc.out_features == 10
    assert torch.equal(model.norm.weight, official['norm.weight'])


@pytest.mark.parametrize(('edit', 'match'), [
    ('drop', r'missing keys \[stages\.1\.blocks\.0\.attn\.rpb\]'),
    ('extra', r'unexpected keys \[stages\.0\.blocks\.0\.attn\.extra\]'),
    ('shape', r'shape mismatches \[stages\.0\.blocks\.0\.attn\.rpb: checkpoint \(1, 9, 9\)'),
])
def test_filter_rejects_mismatched_checkpoint(edit, match):
    model = timm.create_model('nat_test')
    official = official_state_dict('nat_test')
    if edit == 'drop':
        del official['levels.1.blocks.0.attn.rpb']
    elif edit == 'extra':
        official['levels.0.blocks.0.attn.extra'] = torch.zeros(1)
    else:
        official['levels.0.blocks.0.attn.rpb'] = torch.zeros(1, 9, 9)
    with pytest.raises(ValueError, match=match):
        checkpoint_filter_fn(official, model)


def test_filter_rejects_other_family():
    official = official_state_dict('nat_test')
    with pytest.raises(ValueError, match='does not match'):
        checkpoint_filter_fn(official, timm.create_model('dinat_s_test'))


def test_pretrained_cfgs():
    names = timm.list_pretrained('*nat*') + timm.list_pretrained('vitrpb*')
    assert len(names) == 25
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name)
        assert re.match(r'https://shi-labs\.com/projects/(nat|dinat)/checkpoints/', cfg.url), name
        assert cfg.license == 'mit' and cfg.classifier == 'head.fc'
        assert cfg.num_classes == (21841 if name.endswith('.in22k') else 1000)
        assert cfg.crop_pct == (1.0 if '384' in name else 0.875)
