"""BiFormer models: fidelity numbers, family semantics and the checkpoint filter.

The timm contract (classifier, features, intermediates, pruning, checkpointing, meta / dtype) is checked for every
model in test_contract.py."""
import math
import re

import pytest
import timm
import torch

from zoo.models.biformer import BiFormer, BiFormerCfg, checkpoint_filter_fn, model_cfgs

# sum(p.numel() for p in official_model.parameters()), 1000-class head, from the official code
# (rayleizhu/BiFormer @1697bbb) as recorded in the project's model anchors (paper_table.csv)
OFFICIAL_PARAMS = {
    'biformer_tiny': 13_142_760,
    'biformer_small': 25_536_232,
    'biformer_base': 56_804_968,
    'biformer_stl': 28_372_552,
    'biformer_stl_nchw': 28_372_552,
}
TINY = ['biformer_test', 'biformer_stl_test', 'biformer_stl_nchw_test']


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _out_size(name, size):
    """Spatial size of the last stage: 'conv' layouts halve with ceil, 'patch' layouts floor (official convs)."""
    if model_cfgs[name].layout == 'conv':
        return tuple(math.ceil(s / 32) for s in size)
    return tuple(s // 4 // 8 for s in size)


def _backend_available(name):
    from zoo_kernels.routing import routed_attention
    q = torch.zeros(1, 1, 1, 1, 4)
    try:
        routed_attention(q, q, q, torch.zeros(1, 1, 1, dtype=torch.long), backend=name)
    except (ImportError, NotImplementedError):
        return False
    return True


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_param_count_matches_official(name):
    model = timm.create_model(name, device='meta')
    assert _params(model) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('name', TINY)
@pytest.mark.parametrize('size', [(32, 32), (70, 54), (45, 33)], ids=['32x32', '70x54', '45x33'])
def test_tiny_variant_any_size(name, size):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, *size))
    assert feats.shape == (1, model.num_features, *_out_size(name, size))


def test_conv_layout_tiny_inputs():
    model = timm.create_model('biformer_test').eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 13, 9)).shape == (1, 1000)
        assert model(torch.randn(1, 3, 1, 1)).shape == (1, 1000)


@pytest.mark.parametrize('name', TINY)
def test_backends_agree(name, monkeypatch):
    for backend in ('reference', 'torch'):
        if not _backend_available(backend):
            pytest.skip(f'routed_attention backend {backend!r} is not available')
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 76, 52)
    outs = {}
    for backend in ('reference', 'torch'):
        monkeypatch.setenv('ZOO_BRA_BACKEND', backend)
        with torch.no_grad():
            outs[backend] = model(x)
    torch.testing.assert_close(outs['torch'], outs['reference'], atol=1e-5, rtol=1e-4)


@pytest.mark.triton
@pytest.mark.parametrize('name', ['biformer_test', 'biformer_stl_nchw_test'])
def test_triton_backend_agrees_interpreted(name, monkeypatch):
    pytest.importorskip('triton')
    model = timm.create_model(name, num_classes=5).eval()
    x = torch.randn(1, 3, 40, 36)
    outs = {}
    for backend in ('reference', 'triton'):
        monkeypatch.setenv('ZOO_BRA_BACKEND', backend)
        with torch.no_grad():
            outs[backend] = model(x)
    torch.testing.assert_close(outs['triton'], outs['reference'], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('name', TINY)
def test_no_weight_decay_and_groups(name):
    model = timm.create_model(name, device='meta')
    assert model.no_weight_decay() == set()
    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 2 + len(model.stages)  # stem, stages, then norm and head


@pytest.mark.parametrize('name', TINY)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [16, 32, 64, 128]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 48))
    # the 'conv' layout pads (rounds up), the 'patch' layout's convs floor, as the official ones
    rounding = math.ceil if model_cfgs[name].layout == 'conv' else math.floor
    assert [(f.shape[2], f.shape[3]) for f in feats] == [(64 // r, rounding(48 / r)) for r in (4, 8, 16, 32)]


def test_features_only_full_variant():
    model = timm.create_model('biformer_base', features_only=True, device='meta')
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [96, 192, 384, 768]


def test_cfgs_and_overlay():
    cfgs = model_cfgs
    assert cfgs['biformer_tiny'].topks == (1, 4, 16, -1) and cfgs['biformer_tiny'].n_win == 7
    assert [cfgs['biformer_base'].num_heads(i) for i in range(4)] == [3, 6, 12, 8]
    assert cfgs['biformer_stl_nchw'].bra == 'nchw' and cfgs['biformer_stl'].layout == 'patch'
    model = timm.create_model('biformer_tiny', device='meta', drop_path_rate=0.1, n_win=8)
    assert model.stages[0].blocks[0].attn.n_win == 8 and model.stages[0].blocks[0].attn.scale == 64 ** -0.5
    assert model.stages[-1].blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert model.stages[3].blocks[0].attn.num_heads == 8 and model.stages[3].blocks[0].attn.scale == 64 ** -0.5
    soft = timm.create_model('biformer_test', soft_routing=True)
    assert soft.stages[0].blocks[0].attn.routing_mode == 'soft'


@pytest.mark.parametrize(('kwargs', 'err', 'match'), [
    (dict(window_size=7), TypeError, 'unexpected keyword'),
    (dict(topks=(1, 2, 5, -1)), ValueError, 'topks'),
    (dict(topks=(1, 2, 0, -1)), ValueError, 'topks'),
    (dict(head_dim=5), ValueError, 'head_dim'),
    (dict(full_attn_heads=3), ValueError, 'full_attn_heads'),
    (dict(layout='overlap'), ValueError, 'layout'),
    (dict(bra='fused'), ValueError, 'bra'),
    (dict(param_routing=True), ValueError, 'param_routing'),
    (dict(bra='nchw', soft_routing=True), ValueError, 'soft_routing'),
    (dict(drop_path_rate=1.5), ValueError, 'drop_path_rate'),
    (dict(in_chans=0), ValueError, 'in_chans'),
])
def test_constructor_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        timm.create_model('biformer_test', **kwargs)


# official key templates (block indices collapsed to N), from the project's model anchors
TEMPLATE_TINY = '''
downsample_layers.N.N.weight downsample_layers.N.N.bias downsample_layers.N.N.running_mean
downsample_layers.N.N.running_var downsample_layers.N.N.num_batches_tracked
stages.N.N.pos_embed.weight stages.N.N.pos_embed.bias stages.N.N.norm1.weight stages.N.N.norm1.bias
stages.N.N.attn.lepe.weight stages.N.N.attn.lepe.bias stages.N.N.attn.qkv.qkv.weight stages.N.N.attn.qkv.qkv.bias
stages.N.N.attn.wo.weight stages.N.N.attn.wo.bias stages.N.N.norm2.weight stages.N.N.norm2.bias
stages.N.N.mlp.N.weight stages.N.N.mlp.N.bias stages.N.N.attn.qkv.weight stages.N.N.attn.proj.weight
stages.N.N.attn.proj.bias norm.weight norm.bias norm.running_mean norm.running_var norm.num_batches_tracked
head.weight head.bias
'''
TEMPLATE_STL_NCHW = '''
downsample_layers.N.N.weight downsample_layers.N.N.bias downsample_layers.N.N.running_mean
downsample_layers.N.N.running_var downsample_layers.N.N.num_batches_tracked
stages.N.blocks.N.norm1.weight stages.N.blocks.N.norm1.bias stages.N.blocks.N.attn.lepe.weight
stages.N.blocks.N.attn.lepe.bias stages.N.blocks.N.attn.qkv_linear.weight stages.N.blocks.N.attn.qkv_linear.bias
stages.N.blocks.N.attn.output_linear.weight stages.N.blocks.N.attn.output_linear.bias
stages.N.blocks.N.norm2.weight stages.N.blocks.N.norm2.bias stages.N.blocks.N.mlp.N.weight
stages.N.blocks.N.mlp.N.bias stages.N.blocks.N.attn.qkv.weight stages.N.blocks.N.attn.proj.weight
stages.N.blocks.N.attn.proj.bias norm.weight norm.bias norm.running_mean norm.running_var norm.num_batches_tracked
head.weight head.bias
'''
BN = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def official_shapes(name):
    """Key -> shape of the official model's state dict for ``name`` (official module layout of each variant)."""
    cfg = model_cfgs[name]
    dims, conv, nchw = cfg.embed_dims, cfg.layout == 'conv', cfg.bra == 'nchw'
    shapes = {}

    def bn(prefix, c):
        for s in BN:
            shapes[f'{prefix}.{s}'] = () if s == 'num_batches_tracked' else (c,)

    def linear(prefix, cout, cin, bias=True):
        shapes[f'{prefix}.weight'] = (cout, cin, 1, 1) if nchw else (cout, cin)
        if bias:
            shapes[f'{prefix}.bias'] = (cout,)

    c0 = dims[0]
    if conv:
        shapes.update({'downsample_layers.0.0.weight': (c0 // 2, 3, 3, 3), 'downsample_layers.0.0.bias': (c0 // 2,),
                       'downsample_layers.0.3.weight': (c0, c0 // 2, 3, 3), 'downsample_layers.0.3.bias': (c0,)})
        bn('downsample_layers.0.1', c0 // 2)
        bn('downsample_layers.0.4', c0)
    else:
        shapes.update({'downsample_layers.0.0.weight': (c0, 3, 4, 4), 'downsample_layers.0.0.bias': (c0,)})
        bn('downsample_layers.0.1', c0)
    for i in range(1, len(dims)):
        if conv:
            shapes[f'downsample_layers.{i}.0.weight'] = (dims[i], dims[i - 1], 3, 3)
            shapes[f'downsample_layers.{i}.0.bias'] = (dims[i],)
            bn(f'downsample_layers.{i}.1', dims[i])
        else:
            bn(f'downsample_layers.{i}.0', dims[i - 1])
            shapes[f'downsample_layers.{i}.1.weight'] = (dims[i], dims[i - 1], 2, 2)
            shapes[f'downsample_layers.{i}.1.bias'] = (dims[i],)
    for i, (c, depth, topk) in enumerate(zip(dims, cfg.depths, cfg.topks)):
        hidden = int(c * cfg.mlp_ratio)
        for j in range(depth):
            p = f'stages.{i}.{j}.' if conv else f'stages.{i}.blocks.{j}.'
            if cfg.pos_embed_kernel:
                k = cfg.pos_embed_kernel
                shapes.update({p + 'pos_embed.weight': (c, 1, k, k), p + 'pos_embed.bias': (c,)})
            for norm in ('norm1', 'norm2'):
                shapes.update({f'{p}{norm}.weight': (c,), f'{p}{norm}.bias': (c,)})
            shapes.update({p + 'attn.lepe.weight': (c, 1, 5, 5), p + 'attn.lepe.bias': (c,)})
            if topk == -1:
                linear(p + 'attn.qkv', 3 * c, c, bias=False)
                linear(p + 'attn.proj', c, c)
            elif nchw:
                linear(p + 'attn.qkv_linear', 3 * c, c)
                linear(p + 'attn.output_linear', c, c)
            else:
                linear(p + 'attn.qkv.qkv', 3 * c, c)
                linear(p + 'attn.wo', c, c)
            fc2 = 'mlp.3' if conv else 'mlp.2'
            linear(p + 'mlp.0', hidden, c)
            linear(p + fc2, c, hidden)
    bn('norm', dims[-1])
    shapes.update({'head.weight': (1000, dims[-1]), 'head.bias': (1000,)})
    return shapes


def official_state_dict(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randint(0, 100, s) if k.endswith('num_batches_tracked') else torch.randn(*s, generator=g)
            for k, s in official_shapes(name).items()}


def _collapse(keys):
    return {re.sub(r'\.\d+(?=\.)', '.N', k) for k in keys}


def test_official_shapes_follow_the_anchor_templates():
    assert _collapse(official_shapes('biformer_tiny')) == set(TEMPLATE_TINY.split())
    assert _collapse(official_shapes('biformer_stl_nchw')) == set(TEMPLATE_STL_NCHW.split())
    assert official_shapes('biformer_tiny')['stages.3.0.attn.qkv.weight'] == (1536, 512)
    assert official_shapes('biformer_stl_nchw')['stages.0.blocks.0.attn.qkv_linear.weight'] == (288, 96, 1, 1)


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_filter_full_variants_key_sets(name):
    model = timm.create_model(name, device='meta')
    shapes = official_shapes(name)
    official = {k: torch.empty(s, device='meta') for k, s in shapes.items()}
    converted = checkpoint_filter_fn(official, model)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sum(math.prod(s) for k, s in shapes.items() if 'running' not in k and 'num_batches' not in k) == \
        OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('name', TINY)
@pytest.mark.parametrize('wrap', [None, 'model', 'state_dict'])
def test_filter_tiny_official_in_ours_out(name, wrap):
    model = timm.create_model(name)
    official = official_state_dict(name)
    converted = checkpoint_filter_fn({wrap: official} if wrap else official, model)
    model.load_state_dict(converted, strict=True)
    assert not any(k.startswith('downsample_layers.') for k in converted)
    conv = model_cfgs[name].layout == 'conv'
    blk = 'stages.2.1.' if conv else 'stages.2.blocks.1.'
    stem_conv = model.stem.conv1 if conv else model.stem.proj
    down_first = model.stages[2].downsample.reduction if conv else model.stages[2].downsample.norm  # BN first
    assert torch.equal(stem_conv.weight, official['downsample_layers.0.0.weight'])
    assert torch.equal(down_first.weight, official['downsample_layers.2.0.weight'])
    assert torch.equal(model.stages[2].blocks[1].mlp.fc1.weight, official[blk + 'mlp.0.weight'])
    assert torch.equal(model.stages[2].blocks[1].mlp.fc2.bias, official[blk + ('mlp.3.bias' if conv else 'mlp.2.bias')])
    assert torch.equal(model.head.fc.weight, official['head.weight'])
    native = model.state_dict()
    again = checkpoint_filter_fn(native, model)
    assert again.keys() == native.keys() and all(again[k] is native[k] for k in native)


def test_pretrained_file_loads_official_layout(tmp_path):
    official = official_state_dict('biformer_stl_nchw_test')
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in official.items()}
    path = tmp_path / 'official.pth'
    torch.save({'model': official, 'model_ema': ema, 'epoch': 299}, path)
    # the zoo's loader (also for a plain file overlay): the official loader's choice, 'model'
    for overlay in (dict(file=str(path)), dict(file=str(path), custom_load=True)):
        model = timm.create_model('biformer_stl_nchw_test', pretrained=True, pretrained_cfg_overlay=overlay)
        assert torch.equal(model.norm.weight, official['norm.weight'])
    # a new head for fine-tuning, and a one-channel stem: head re-initialised, stem adapted, the rest loaded
    model = timm.create_model('biformer_stl_nchw_test', pretrained=True, num_classes=10, in_chans=1,
                              pretrained_cfg_overlay=dict(file=str(path), custom_load=True))
    assert model.head.fc.out_features == 10 and model.stem.proj.weight.shape[1] == 1
    assert torch.equal(model.stages[1].downsample.proj.weight, official['downsample_layers.1.1.weight'])
    # timm's generic file loader, asked for by custom_load=False, prefers model_ema, as for every timm model
    model = timm.create_model('biformer_stl_nchw_test', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), custom_load=False))
    assert torch.equal(model.norm.weight, ema['norm.weight'])


@pytest.mark.parametrize(('edit', 'match'), [
    ('drop', r'missing keys \[stages\.1\.blocks\.0\.attn\.lepe\.weight\]'),
    ('extra', r'unexpected keys \[stages\.0\.blocks\.0\.attn\.extra\]'),
    ('shape', r'shape mismatches \[stages\.0\.blocks\.0\.attn\.wo\.weight: checkpoint \(16, 8\)'),
])
def test_filter_rejects_mismatched_checkpoint(edit, match):
    model = timm.create_model('biformer_test')
    official = official_state_dict('biformer_test')
    if edit == 'drop':
        del official['stages.1.0.attn.lepe.weight']
    elif edit == 'extra':
        official['stages.0.0.attn.extra'] = torch.zeros(1)
    else:
        official['stages.0.0.attn.wo.weight'] = torch.zeros(16, 8)
    with pytest.raises(ValueError, match=match):
        checkpoint_filter_fn(official, model)


def test_filter_rejects_other_layout():
    with pytest.raises(ValueError, match='does not match'):
        checkpoint_filter_fn(official_state_dict('biformer_stl_test'), timm.create_model('biformer_stl_nchw_test'))


def test_pretrained_cfgs():
    names = timm.list_pretrained('biformer*')
    assert sorted(names) == sorted(f'{n}.in1k' for n in OFFICIAL_PARAMS)
    files = set()
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name)
        url, file_name = cfg.url
        assert re.match(r'https://api\.onedrive\.com/v1\.0/shares/s!\w[\w-]+/root/content$', url), name
        assert file_name == name.replace('.in1k', '_in1k.pth')
        files.add(file_name)
        assert cfg.custom_load and cfg.license == 'mit' and cfg.classifier == 'head.fc'
        assert cfg.num_classes == 1000 and cfg.crop_pct == 0.875 and cfg.interpolation == 'bicubic'
        assert cfg.first_conv == ('stem.proj' if name.startswith('biformer_stl') else 'stem.conv1')
    assert len(files) == len(names)


def test_model_class_direct():
    model = BiFormer(BiFormerCfg(**dict(model_cfgs['biformer_test'].__dict__)), num_classes=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
