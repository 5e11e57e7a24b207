"""MaxViT: timm's ``maxvit_*_tf`` weights -> timm's logits, exact parameter counts, any input size, the filter.

timm's PyTorch port is the reference (the official code is TensorFlow). Its models are built with seeded,
non-trivial weights (BN statistics and affines, LN affines, biases and the relative position tables randomised),
loaded into ours through :func:`checkpoint_filter_fn`, and compared in eval mode as ``||ours - timm|| / ||timm||``.
The GMACs of the published variants are checked against the README table by ``test_gmacs.py``.
"""
import math

import pytest
import timm
import torch
import torch.nn as nn
from timm.models.maxxvit import MaxxVit, MaxxVitCfg, _tf_cfg
from timm.models.maxxvit import checkpoint_filter_fn as timm_checkpoint_filter_fn

from zoo.models.maxvit import MaxVit, MaxVitCfg, checkpoint_filter_fn, model_cfgs

SIZES = ('tiny', 'small', 'base', 'large', 'xlarge')
RESOLUTIONS = (224, 384, 512)
# sum(p.numel() for p in timm.create_model('maxvit_<size>_tf_<res>', num_classes=1000).parameters()), the
# project's paper_table.csv ``params_exact_official_code`` column
PAPER_PARAMS = {
    'maxvit_zoo_tiny_224': 30_916_528, 'maxvit_zoo_tiny_384': 30_977_008, 'maxvit_zoo_tiny_512': 31_049_584,
    'maxvit_zoo_small_224': 68_927_956, 'maxvit_zoo_small_384': 69_018_676, 'maxvit_zoo_small_512': 69_127_540,
    'maxvit_zoo_base_224': 119_467_708, 'maxvit_zoo_base_384': 119_653_468, 'maxvit_zoo_base_512': 119_876_380,
    'maxvit_zoo_large_224': 211_785_560, 'maxvit_zoo_large_384': 212_033_240, 'maxvit_zoo_large_512': 212_330_456,
    'maxvit_zoo_xlarge_224': 474_951_952, 'maxvit_zoo_xlarge_384': 475_323_472, 'maxvit_zoo_xlarge_512': 475_769_296,
}
TOL = 1e-4


def _timm_name(ours: str) -> str:
    _, _, size, res = ours.split('_')
    return f'maxvit_{size}_tf_{res}'


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights: BN statistics and affines, LN affines (1 + 0.1 randn), biases, randn bias tables."""
    g = torch.Generator().manual_seed(seed)

    def randn(t):
        return torch.randn(t.shape, generator=g)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * randn(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(1 + 0.1 * randn(m.weight))
                m.bias.copy_(0.1 * randn(m.bias))
        for name, p in model.named_parameters():
            if name.endswith('relative_position_bias_table'):
                p.copy_(randn(p))
            elif name.endswith('.bias') and 'norm' not in name:
                p.copy_(0.02 * randn(p))
    return model.eval()


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


def _pair(timm_model: nn.Module, ours: nn.Module):
    _randomize(timm_model)
    ours.load_state_dict(checkpoint_filter_fn(timm_model.state_dict(), ours))
    return timm_model.eval(), ours.eval()


def _timm_test_model(img_size: int = 128, **kwargs) -> MaxxVit:
    """timm's MaxxVit with the TF MaxViT blocks at ``maxvit_zoo_test``'s widths (window img_size // 32 = 4)."""
    cfg = MaxxVitCfg(embed_dim=(16, 32, 48, 64), depths=(1, 1, 2, 1), block_type=('M',) * 4, stem_width=16,
                     stem_bias=True, head_hidden_size=64, **_tf_cfg())
    return MaxxVit(cfg, img_size=img_size, transformer_dim_head=8, **kwargs)


def test_names_cover_every_timm_tf_variant_without_shadowing():
    ours = set(timm.list_models('maxvit_zoo_*'))
    assert ours == {f'maxvit_zoo_{s}_{r}' for s in SIZES for r in RESOLUTIONS} | {'maxvit_zoo_test'}
    timm_tf = {n for n in timm.list_models('maxvit_*_tf_*')}
    assert {_timm_name(n) for n in ours if n != 'maxvit_zoo_test'} == timm_tf
    assert all(timm.models.model_entrypoint(n).__module__ == 'zoo.models.maxvit' for n in ours)
    assert all(timm.models.model_entrypoint(n).__module__ == 'timm.models.maxxvit' for n in timm_tf)


@pytest.mark.parametrize('name', list(PAPER_PARAMS))
def test_param_count_matches_paper_table(name):
    model = timm.create_model(name, device='meta', num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[name]


def test_pretrained_cfgs_point_at_timms_weights_of_the_same_variant():
    tagged = [n for n in timm.list_pretrained('maxvit_zoo_*')]
    assert len(tagged) == 21
    for name in tagged:
        arch, tag = name.split('.')
        ours = timm.get_pretrained_cfg(name).to_dict()
        ref = timm.get_pretrained_cfg(f'{_timm_name(arch)}.{tag}').to_dict()
        assert ours['hf_hub_id'] == f'timm/{_timm_name(arch)}.{tag}'
        for key in ('num_classes', 'input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation',
                    'first_conv', 'classifier'):
            assert ours[key] == ref[key], (name, key)
        res = ours['input_size'][-1]
        assert tuple(ours['pool_size']) == (res // 32, res // 32) and not ours['fixed_input_size']
    # the default tag of each name is timm's
    for arch in timm.list_models('maxvit_zoo_*'):
        if arch != 'maxvit_zoo_test':
            assert timm.get_pretrained_cfg(arch).tag == timm.get_pretrained_cfg(_timm_name(arch)).tag


def test_tiny_224_reproduces_timm_logits():
    ref, ours = _pair(timm.create_model('maxvit_tiny_tf_224'), timm.create_model('maxvit_zoo_tiny_224'))
    # the native size and another one timm accepts (every stage map divisible by the 7x7 window and grid)
    for size in ((224, 224), (224, 448)):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = ref(x)
            assert _rel_err(ours(x), expected) <= TOL, size
    with pytest.raises(AssertionError, match='divisible'):
        with torch.no_grad():
            ref(torch.randn(1, 3, 256, 256))  # timm's port rejects it; ours pads (test_any_input_size)


def test_384_variant_reproduces_timm_logits():
    # one block per stage keeps it cheap; every block type and the 12x12 window and grid are exercised
    depths = (1, 1, 1, 1)
    ref, ours = _pair(timm.create_model('maxvit_tiny_tf_384', depths=depths),
                      timm.create_model('maxvit_zoo_tiny_384', depths=depths))
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        assert _rel_err(ours(x), ref(x)) <= TOL


@pytest.mark.parametrize('head_first', [False, True], ids=['tf', 'head_first'])
def test_test_variant_reproduces_timm_config(head_first):
    ref, ours = _pair(_timm_test_model(transformer_head_first=head_first),
                      timm.create_model('maxvit_zoo_test', head_first=head_first))
    for size in ((128, 128), (128, 256)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert _rel_err(ours(x), ref(x)) <= TOL, size
            # the features and pre-logits too, and the stages as timm's feature list
            assert _rel_err(ours.forward_head(ours.forward_features(x), pre_logits=True),
                            ref.forward_head(ref.forward_features(x), pre_logits=True)) <= TOL
            for a, b in zip(ours.forward_intermediates(x, intermediates_only=True),
                            ref.forward_intermediates(x, intermediates_only=True)):
                assert _rel_err(a, b) <= TOL


def test_training_mode_matches_timm():
    ref, ours = _pair(_timm_test_model(), timm.create_model('maxvit_zoo_test'))
    ref.train()
    ours.train()
    x = torch.randn(2, 3, 128, 128)
    out_ref, out = ref(x), ours(x)
    assert _rel_err(out, out_ref) <= TOL
    out_ref.square().sum().backward()
    out.square().sum().backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    grads = {n: p.grad for n, p in ours.named_parameters()}
    assert grads.keys() == ref_grads.keys()
    flat, flat_ref = (torch.cat([g[n].flatten() for n in sorted(g)]) for g in (grads, ref_grads))
    assert _rel_err(flat, flat_ref) <= TOL
    # per parameter, up to rounding noise (a conv bias before a train-mode BN has a gradient of ~0)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-3, atol=1e-4 * flat_ref.abs().max().item(), msg=name)


@pytest.mark.parametrize('size', [(256, 256), (200, 136), (64, 64), (33, 47)], ids=str)
def test_any_input_size(size):
    model = timm.create_model('maxvit_zoo_test').eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.shape == (1, 64, math.ceil(size[0] / 32), math.ceil(size[1] / 32))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_full_tiny_any_input_size():
    model = timm.create_model('maxvit_zoo_tiny_224').eval()
    with torch.no_grad():
        out = model.forward_intermediates(torch.randn(1, 3, 200, 136), intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in out] == [(100, 68), (50, 34), (25, 17), (13, 9), (7, 5)]


def test_pretrained_file_overlay_loads_timm_weights(tmp_path):
    ref = _randomize(_timm_test_model())
    path = tmp_path / 'timm_maxvit_test.pth'
    torch.save(ref.state_dict(), path)
    x = torch.randn(2, 3, 128, 128)
    ours = timm.create_model('maxvit_zoo_test', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        assert _rel_err(ours(x), ref(x)) <= TOL
    # timm's loader adapts the classifier and the first conv around the filter
    other = timm.create_model('maxvit_zoo_test', pretrained=True, num_classes=10, in_chans=1,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert other.head.fc.out_features == 10 and other.stem.conv1.in_channels == 1
    torch.testing.assert_close(other.stages[2].blocks[1].attn_grid.attn.rel_pos.relative_position_bias_table,
                               ref.stages[2].blocks[1].attn_grid.attn.rel_pos.relative_position_bias_table)


def test_img_size_sets_the_window_as_timm_and_resizes_tables_as_timm():
    ref = _randomize(_timm_test_model())
    state = ref.state_dict()
    # timm: a 256 px model (8x8 windows) loading 128 px weights through timm's own filter
    big = _timm_test_model(img_size=256)
    big.load_state_dict(timm_checkpoint_filter_fn(state, big))
    ours = timm.create_model('maxvit_zoo_test', img_size=256)
    assert ours.window_size == ours.grid_size == (8, 8)
    ours.load_state_dict(checkpoint_filter_fn(state, ours))
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert _rel_err(ours.eval()(x), big.eval()(x)) <= TOL


def test_checkpoint_filter():
    model = timm.create_model('maxvit_zoo_test')
    state = model.state_dict()
    assert checkpoint_filter_fn({'state_dict': state}, model).keys() == state.keys()
    # 1x1-conv projections saved as convs load as Linear weights
    conv_saved = {k: (v[..., None, None] if k.endswith('attn.qkv.weight') else v) for k, v in state.items()}
    out = checkpoint_filter_fn(conv_saved, model)
    assert all(out[k].shape == v.shape for k, v in state.items())
    with pytest.raises(ValueError, match='missing keys'):
        checkpoint_filter_fn({k: v for k, v in state.items() if 'attn_grid' not in k}, model)
    with pytest.raises(ValueError, match='unexpected keys'):
        checkpoint_filter_fn(dict(state, extra=torch.zeros(1)), model)


def test_bad_arguments():
    with pytest.raises(ValueError, match='dim_head'):
        MaxVitCfg(embed_dims=(64, 128, 256, 500))
    with pytest.raises(ValueError, match='window_size'):
        MaxVitCfg(window_size=0)
    with pytest.raises(ValueError, match='grid_size'):
        MaxVitCfg(grid_size=(4, 0))
    with pytest.raises(ValueError, match='embed_dims'):
        MaxVitCfg(depths=(2, 2, 5))
    with pytest.raises(ValueError, match='img_size'):
        timm.create_model('maxvit_zoo_test', img_size=16, device='meta')
    with pytest.raises(ValueError, match='dim_head'):
        timm.create_model('maxvit_zoo_test', dim_head=12, device='meta')
    with pytest.raises(ValueError, match='drop_path_rate'):
        timm.create_model('maxvit_zoo_test', drop_path_rate=1.5, device='meta')
    with pytest.raises(TypeError, match='window'):
        MaxVit(model_cfgs['maxvit_zoo_test'], window=3)
