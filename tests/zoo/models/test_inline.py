"""InLine-Swin / -PVT / -DeiT fidelity: exact official parameter counts, the per-variant layout the official configs
build (attention types per block, heads, no final norm in PVT), the checkpoint filter, cfgs and options.

The official logits are checked by ``test_official_fixtures.py`` (family ``inline``); the timm contract by
``test_contract.py``.
"""
import pytest
import timm
import torch
import torch.nn as nn

import zoo  # noqa: F401  (registers the models)
from zoo.layers import InLineAttention, SpatialReductionAttentionCl
from zoo.models._swin_like import SwinWindowAttentionCl
from zoo.models.inline import InLineDeit, InLinePvt, InLineSwin, checkpoint_filter_fn

# paper_table.csv params_exact_official_code (the official classes built from cfgs/*.yaml)
PARAMS = {
    'inline_deit_tiny': 6_477_736,
    'inline_deit_small': 16_734_760,
    'inline_deit_base': 23_797_096,
    'inline_pvt_tiny': 12_032_232,
    'inline_pvt_small': 21_556_136,
    'inline_pvt_medium': 37_618_856,
    'inline_pvt_large': 51_154_280,
    'inline_swin_tiny': 29_223_544,
    'inline_swin_small': 49_793_296,
    'inline_swin_base': 88_350_120,
    'inline_swin_base_384': 88_465_320,
}


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', sorted(PARAMS))
def test_exact_official_param_count(name):
    assert _count(timm.create_model(name, device='meta')) == PARAMS[name]


def test_readme_swin_t_count_is_the_all_inline_config():
    """The README's 30M for InLine-Swin-T matches IIII (29,722,312), not the cfg's IIIS (29,223,544)."""
    assert _count(timm.create_model('inline_swin_tiny', device='meta', attn_type='IIII')) == 29_722_312


def _attn_kinds(model):
    return [['I' if isinstance(b.attn, InLineAttention) else 'S' for b in stage.blocks] for stage in model.stages]


@pytest.mark.parametrize(('name', 'kinds'), [
    ('inline_swin_tiny', ['II', 'II', 'I' * 6, 'SS']),
    ('inline_swin_small', ['II', 'II', 'S' * 18, 'SS']),
    ('inline_swin_base', ['II', 'II', 'II' + 'S' * 16, 'SS']),
    ('inline_swin_base_384', ['II', 'II', 'II' + 'S' * 16, 'SS']),
])
def test_swin_attention_types_and_windows(name, kinds):
    model = timm.create_model(name, device='meta')
    assert [''.join(k) for k in _attn_kinds(model)] == kinds
    win = 12 if name.endswith('384') else 7
    res = model.cfg.resolutions()
    for stage, r in zip(model.stages, res):
        for block in stage.blocks:
            if isinstance(block.attn, SwinWindowAttentionCl):
                # a window covering the stage is clamped to it (stage 4: 7x7 at 224, 12x12 at 384)
                assert block.attn.window_size == (min(win, r[0]),) * 2
            else:  # InLine blocks are global: the layer itself, not wrapped in windows
                assert isinstance(block.attn, InLineAttention) and block.attn.qkv_layout == 'qkv'
    heads = [stage.blocks[0].attn.num_heads for stage in model.stages]
    assert heads == ([4, 8, 16, 32] if 'base' in name else [3, 6, 12, 24])


@pytest.mark.parametrize('name', ['inline_pvt_tiny', 'inline_pvt_small', 'inline_pvt_medium', 'inline_pvt_large'])
def test_pvt_layout(name):
    model = timm.create_model(name, device='meta')
    assert isinstance(model.norm, nn.Identity)  # no final norm
    for stage, heads, dim, mlp in zip(model.stages, (2, 4, 10, 16), (64, 128, 320, 512), (8, 8, 4, 4)):
        for block in stage.blocks:
            assert isinstance(block.attn, InLineAttention)
            assert block.attn.qkv_layout == 'q_kv' and block.attn.num_heads == heads
            assert block.mlp.fc1.out_features == dim * mlp
            assert block.norm1.eps == 1e-6
        assert stage.pos_embed.shape[-1] == dim
    assert model.patch_embed.norm.eps == 1e-5


@pytest.mark.parametrize(('name', 'dim', 'heads', 'img'), [
    ('inline_deit_tiny', 192, 6, 224), ('inline_deit_small', 320, 10, 288), ('inline_deit_base', 384, 12, 448)])
def test_deit_widths(name, dim, heads, img):
    model = timm.create_model(name, device='meta')
    assert model.embed_dim == dim and model.pretrained_cfg['input_size'] == (3, img, img)
    assert model.pos_embed.shape == (1, 1 + (img // 16) ** 2, dim)
    assert all(isinstance(b.attn, InLineAttention) and b.attn.num_heads == heads and b.attn.num_prefix_tokens == 1
               for b in model.blocks)


def test_pvt_test_variant_has_a_plain_sra_stage():
    model = timm.create_model('inline_pvt_test')
    assert [''.join(k) for k in _attn_kinds(model)] == ['I', 'II', 'S', 'I']
    assert isinstance(model.stages[2].blocks[0].attn, SpatialReductionAttentionCl)
    assert model.stages[2].blocks[0].attn.sr_ratio == 2


@pytest.mark.parametrize('name', ['inline_swin_test', 'inline_pvt_test', 'inline_deit_test'])
def test_kernel_func_option(name):
    model = timm.create_model(name, kernel_func='relu')
    layers = [m for m in model.modules() if isinstance(m, InLineAttention)]
    assert layers and all(m.kernel_func == 'relu' for m in layers)
    with pytest.raises(ValueError, match='kernel_func'):
        timm.create_model(name, kernel_func='softmax')


def test_pvt_position_embedding_resampling():
    """At img_size the stored embedding is used as is; other sizes resample (bilinear) and odd sizes pad."""
    model = timm.create_model('inline_pvt_test').eval()
    with torch.no_grad():
        for size in ((64, 64), (50, 70), (96, 32)):
            assert model(torch.randn(1, 3, *size)).shape == (1, 1000)
            feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
            assert [tuple(f.shape[-2:]) for f in feats][0] == (-(-size[0] // 4), -(-size[1] // 4))


def test_pvt_rejects_bad_attn_type():
    with pytest.raises(ValueError, match='attn_type'):
        timm.create_model('inline_pvt_test', attn_type='IIAI')
    with pytest.raises(ValueError, match='attn_type'):
        timm.create_model('inline_pvt_test', attn_type='III')


def test_swin_rejects_bad_widths():
    with pytest.raises(ValueError, match='embed_dim must be >= 1, got embed_dim=0'):
        timm.create_model('inline_swin_test', embed_dim=0)
    with pytest.raises(ValueError, match=r'num_heads must divide the stage widths \[20, 40, 80, 160\]'):
        timm.create_model('inline_swin_test', num_heads=(3, 3, 3, 3))


def test_pretrained_cfgs():
    for name, url_id in (('inline_swin_tiny', '32810869fcc34410966b'), ('inline_pvt_large', 'efd91318ba964f01b288'),
                         ('inline_deit_base', '10bdd726d4b0435eb34e')):
        cfg = timm.get_pretrained_cfg(name)
        assert url_id in cfg.url and cfg.num_classes == 1000
    assert timm.get_pretrained_cfg('inline_deit_small').input_size == (3, 288, 288)
    assert not timm.get_pretrained_cfg('inline_swin_base_384').url  # no released checkpoint
    assert set(timm.list_models('inline_*', pretrained=True)) == {
        f'{n}.in1k' for n in PARAMS if n != 'inline_swin_base_384'}


# -------------------------------------------------------------------------------------------------- the filter
def _official_swin_keys(model):
    """Our state dict renamed back to the official InLine-Swin key layout (+ its buffers)."""
    out = {}
    for k, v in model.state_dict().items():
        k2 = k.replace('attn.rel_pos.relative_position_bias_table', 'attn.relative_position_bias_table')
        if k2.startswith('stages.'):
            i, rest = int(k2.split('.')[1]), k2.split('.', 2)[2]
            k2 = f'layers.{i - 1}.{rest}' if rest.startswith('downsample.') else f'layers.{i}.{rest}'
        k2 = k2.replace('head.fc.', 'head.')
        out[k2] = v
        if k2.endswith('relative_position_bias_table'):
            out[k2.replace('relative_position_bias_table', 'relative_position_index')] = torch.zeros(1)
    return out


def test_filter_swin_official_layout_round_trip():
    model = timm.create_model('inline_swin_test')
    official = _official_swin_keys(model)
    assert any(k.startswith('layers.0.downsample.') for k in official)
    converted = checkpoint_filter_fn({'model': official}, model)
    assert converted.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(converted[k], v)


def test_filter_pvt_keys():
    model = timm.create_model('inline_pvt_test')
    sd = model.state_dict()
    official = {}
    for k, v in sd.items():
        k2 = k.replace('head.fc.', 'head.')
        if k2.startswith('patch_embed.'):
            k2 = 'patch_embed1.' + k2[len('patch_embed.'):]
        elif k2.startswith('stages.'):
            i, rest = int(k2.split('.')[1]), k2.split('.', 2)[2]
            k2 = {'downsample': f'patch_embed{i + 1}', 'pos_embed': f'pos_embed{i + 1}',
                  'blocks': f'block{i + 1}'}[rest.split('.')[0]] + rest[len(rest.split('.')[0]):]
        official[k2] = v
    assert {'patch_embed1.proj.weight', 'patch_embed2.proj.weight', 'pos_embed4', 'block3.0.attn.sr.weight',
            'block1.0.attn.residual.2.weight', 'head.weight'} <= set(official)
    converted = checkpoint_filter_fn(official, model)
    assert all(torch.equal(converted[k], v) for k, v in sd.items()) and converted.keys() == sd.keys()


def test_filter_deit_resamples_pos_embed_and_checks_keys():
    model = timm.create_model('inline_deit_test', img_size=96)
    sd = timm.create_model('inline_deit_test').state_dict()  # 64 px: 4x4 grid
    converted = checkpoint_filter_fn(sd, model)
    assert converted['pos_embed'].shape == model.pos_embed.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(converted['pos_embed'][:, 0], sd['pos_embed'][:, 0])
    del sd['blocks.0.attn.residual.0.weight']
    with pytest.raises(ValueError, match='missing keys'):
        checkpoint_filter_fn(sd, timm.create_model('inline_deit_test'))


def test_filter_rejects_other_models():
    with pytest.raises(ValueError, match='InLine'):
        checkpoint_filter_fn({}, nn.Linear(2, 2))


def test_families_are_distinct_classes():
    assert isinstance(timm.create_model('inline_swin_test'), InLineSwin)
    assert isinstance(timm.create_model('inline_pvt_test'), InLinePvt)
    assert isinstance(timm.create_model('inline_deit_test'), InLineDeit)
