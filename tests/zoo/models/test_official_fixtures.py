"""Our NAT-family and BiFormer models against logits computed by the OFFICIAL code (tests/fixtures/).

The fixtures were made by ``tests/fixtures/make_{nat,biformer}_fixtures.py`` from the official repositories
(SHI-Labs/Neighborhood-Attention-Transformer on NATTEN 0.17.5, rayleizhu/BiFormer), in float64. Two kinds of case:

* stored: a small official configuration whose official-layout checkpoint is a file here. It goes through timm's
  pretrained path (``pretrained_cfg_overlay=dict(file=...)``) and so through the family's ``checkpoint_filter_fn``.
  Its weights give every norm, bias, layer scale and relative-position table a non-trivial value, so a swapped or
  mis-wired tensor changes the logits.
* seeded: a released architecture (config-table entry) whose weights are regenerated here from the official key ->
  shape table and a seed (``tests/fixtures/seeded.py``), converted by ``checkpoint_filter_fn`` and loaded strictly.
  A wrong dilation schedule, top-k, head count or scale in the variant table fails these.

Our models run in float32 (as users run them); the error bound is ``||ours - official|| / ||official|| <= 1e-4``.
A missing or incomplete fixture is a failure, never a skip.
"""
import functools
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import zoo  # noqa: F401  (registers the models)

FIXTURES = Path(__file__).resolve().parents[2] / 'fixtures'
RTOL = 1e-4


def _import_seeded():
    spec = importlib.util.spec_from_file_location('zoo_test_fixtures_seeded', FIXTURES / 'seeded.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


seeded = _import_seeded()

_NAT_MICRO = dict(num_classes=10, kernel_size=3, mlp_ratio=2.)
_BIFORMER_MICRO = dict(num_classes=10, embed_dims=(8, 16, 24, 32), depths=(1, 1, 2, 1), topks=(1, 3, 8, -1),
                       head_dim=8, full_attn_heads=8, n_win=4, mlp_ratio=2.)
_LITV2_MICRO = dict(num_classes=10, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2), local_ws=(0, 2, 2, 1),
                    mlp_ratio=2.)
_RAVLT_MICRO = dict(num_classes=10, embed_dims=(8, 16, 24, 32), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4),
                    mlp_ratio=2., head_hidden_size=32)
# fixture case -> (our model name, overrides of its config); the seeded cases are the released variants themselves
CASES = {
    'nat': {
        'dinat_micro': ('dinat_test', dict(
            _NAT_MICRO, embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4), dilations=((1, 4), (1, 2), (1, 1)),
            layer_scale=0.5)),
        'dinat_s_micro': ('dinat_s_test', dict(
            _NAT_MICRO, embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4), dilations=((1, 4), (1, 2), (1, 1)))),
        'dinat_isotropic_micro': ('dinat_isotropic_test', dict(
            _NAT_MICRO, embed_dim=16, depths=(4,), num_heads=(2,), dilations=((1, 3, 1, 3),), patch_size=4)),
        'vitrpb_micro': ('vitrpb_test', dict(
            num_classes=10, mlp_ratio=2., embed_dim=16, depths=(2,), num_heads=(2,), dilations=((1, 1),), patch_size=4,
            img_size=32)),
        'nat_mini': ('nat_mini', {}),
        'dinat_tiny': ('dinat_tiny', {}),
        'dinat_s_tiny': ('dinat_s_tiny', {}),
        'nat_isotropic_small': ('nat_isotropic_small', {}),
        'dinat_isotropic_small': ('dinat_isotropic_small', {}),
        'vitrpb_small': ('vitrpb_small', {}),
    },
    'biformer': {
        'conv_micro': ('biformer_test', dict(_BIFORMER_MICRO)),
        'stl_micro': ('biformer_stl_test', dict(_BIFORMER_MICRO)),
        'stl_nchw_micro': ('biformer_stl_nchw_test', dict(_BIFORMER_MICRO)),
        'biformer_tiny': ('biformer_tiny', {}),
        'biformer_stl': ('biformer_stl', {}),
        'biformer_stl_nchw': ('biformer_stl_nchw', {}),
    },
    'agent': {
        'swin_micro': ('agent_swin_test', dict(
            num_classes=10, embed_dim=8, depths=(2, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=64, mlp_ratio=2.,
            attn_type='BAMB1', agent_num=(4, 9, 4, 4))),
        'pvt_micro': ('agent_pvt_test', dict(
            num_classes=10, embed_dims=(8, 16, 32, 64), depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8),
            mlp_ratios=(2, 2, 2, 2), sr_ratios=(8, 4, 2, 1), attn_type='AABA', agent_num=(4, 9, 4, 4),
            agent_sr_ratios=(1, 2, 1, 2))),
        'deit_micro': ('agent_deit_test', dict(
            num_classes=10, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2., family_depth=3, agent_num=(4, 4, 4, 4))),
        'agent_swin_tiny': ('agent_swin_tiny', {}),
        'agent_pvt_tiny': ('agent_pvt_tiny', {}),
        'agent_deit_tiny': ('agent_deit_tiny', {}),
    },
    'inline': {
        'swin_micro': ('inline_swin_test', dict(
            num_classes=10, embed_dim=8, depths=(2, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=64, mlp_ratio=2.,
            attn_type='SIMS1')),
        'pvt_micro': ('inline_pvt_test', dict(
            num_classes=10, embed_dims=(8, 16, 32, 64), depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8),
            mlp_ratios=(2, 2, 2, 2), sr_ratios=(8, 4, 2, 1), attn_type='IISI')),
        'deit_micro': ('inline_deit_test', dict(num_classes=10, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.)),
        'inline_swin_tiny': ('inline_swin_tiny', {}),
        'inline_pvt_tiny': ('inline_pvt_tiny', {}),
        'inline_deit_tiny': ('inline_deit_tiny', {}),
    },
    'litv2': {
        'micro': ('litv2_test', dict(_LITV2_MICRO, alpha=0.5)),
        'micro_alpha0': ('litv2_test', dict(_LITV2_MICRO, alpha=0.)),
        'micro_alpha1': ('litv2_test', dict(_LITV2_MICRO, alpha=1.)),
        'litv2_small': ('litv2_small', {}),
    },
    'ravlt': {
        'micro': ('ravlt_test', dict(_RAVLT_MICRO, layer_scale=(1.,) * 4)),
        'micro_nols': ('ravlt_test', dict(_RAVLT_MICRO, layer_scale=(None,) * 4, attn_types=('rala',) * 4)),
        'ravlt_tiny': ('ravlt_tiny', {}),
        'ravlt_small': ('ravlt_small', {}),
        'ravlt_base': ('ravlt_base', {}),
    },
    'flowformer': {
        'micro': ('flowformer_test', dict(
            num_classes=10, embed_dims=(12, 24, 36, 48), depths=(1, 1, 2, 1), num_heads=12, mlp_ratio=2., img_size=64)),
        'flowformer_cv': ('flowformer_cv', {}),
    },
}


def _filter_fn(name):
    """The ``checkpoint_filter_fn`` of the module that registers ``name`` (the one its pretrained loader uses)."""
    return sys.modules[timm.models.model_entrypoint(name).__module__].checkpoint_filter_fn


@functools.lru_cache(maxsize=None)
def _family(family):
    """(metadata, tensors) of a family's fixture; a missing file raises (the test fails)."""
    with open(FIXTURES / f'{family}_official.json') as f:
        meta = json.load(f)
    return meta, load_file(str(FIXTURES / f'{family}_official.safetensors'))


def _cases(kind):
    """(family, case) pairs of one kind, from the test's own table (so a case missing from a fixture fails)."""
    out = []
    for family, cases in CASES.items():
        for case in cases:
            is_seeded = CASES[family][case][0] == case
            if (kind == 'seeded') == is_seeded:
                out.append(pytest.param(family, case, id=f'{family}-{case}'))
    return out


def _rel_err(ours, ref):
    return float((ours.double() - ref).norm() / ref.norm())


def _forward(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize('family', list(CASES))
def test_fixture_files_complete(family):
    meta, tensors = _family(family)
    assert set(meta['cases']) == set(CASES[family])
    assert meta['official']['commit'] and meta['dtype'] == 'float64'
    for case, spec in meta['cases'].items():
        logits = tensors[f'{case}.logits']
        assert logits.dtype == torch.float64 and torch.isfinite(logits).all()
        assert math.isclose(float(logits.norm()), spec['logits_norm'], rel_tol=1e-12)
        if spec['kind'] == 'stored':
            assert (FIXTURES / spec['weights']).is_file()


@pytest.mark.parametrize(('family', 'case'), _cases('stored'))
def test_stored_checkpoint_matches_official(family, case):
    """Official-layout checkpoint file -> timm's pretrained loader (checkpoint_filter_fn) -> official logits."""
    meta, tensors = _family(family)
    spec = meta['cases'][case]
    name, kwargs = CASES[family][case]
    path = FIXTURES / spec['weights']
    model = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=kwargs['num_classes']),
        **kwargs)
    official = load_file(str(path))
    head = model.get_classifier().weight
    # a 1x1-conv classifier (RAVLT) is stored [K, C, 1, 1]
    assert torch.equal(head, official['head.weight'].float().reshape(head.shape)), 'the stored head was not loaded'
    h, w = spec['input_crop']
    x = tensors['input'][..., :h, :w].float()
    ref = tensors[f'{case}.logits']
    err = _rel_err(_forward(model, x), ref)
    assert err <= RTOL, f'{family}/{case}: relative error {err:.3g} vs the official logits'


@pytest.mark.parametrize(('family', 'case'), _cases('seeded'))
def test_seeded_variant_matches_official(family, case):
    """A released architecture with seeded official-layout weights -> checkpoint_filter_fn -> official logits."""
    meta, tensors = _family(family)
    spec = meta['cases'][case]
    name, kwargs = CASES[family][case]
    shapes = seeded.parse_shapes(spec['shapes'])
    weights = seeded.seeded_state_dict(shapes, spec['seed'])
    if not math.isclose(seeded.checksum(weights[k] for k in sorted(weights)), spec['weights_checksum'],
                        rel_tol=1e-9):
        pytest.fail('the seeded weights differ from those the fixture was made with: did torch.Generator change '
                    'what it draws? Regenerate the fixtures (tests/fixtures/README.md)')
    for key in spec['derived_buffers']:  # present in official checkpoints; the filter must drop or ignore them
        weights[key] = torch.zeros(shapes[key], dtype=torch.long)
    x = seeded.seeded_input(spec['input_shape'], spec['input_seed'])
    assert math.isclose(seeded.checksum([x]), spec['input_checksum'], rel_tol=1e-9)
    # built on the meta device and loaded with assign: the init would only be overwritten
    model = timm.create_model(name, device='meta', **kwargs)
    converted = _filter_fn(name)(weights, model)
    model.load_state_dict(converted, strict=True, assign=True)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    err = _rel_err(_forward(model, x), tensors[f'{case}.logits'])
    assert err <= RTOL, f'{family}/{case}: relative error {err:.3g} vs the official logits'


def test_biformer_official_wrapped_checkpoint(tmp_path):
    """The released BiFormer files hold {'model': ..., 'model_ema': ...}; the official builders load 'model', and so
    does our custom loader (``custom_load=True``), which must give the official logits."""
    meta, tensors = _family('biformer')
    spec = meta['cases']['conv_micro']
    official = load_file(str(FIXTURES / spec['weights']))
    ema = {k: v * 1.5 if v.is_floating_point() else v for k, v in official.items()}
    path = tmp_path / 'biformer_official.pth'
    torch.save({'model': official, 'model_ema': ema, 'epoch': 299}, path)
    name, kwargs = CASES['biformer']['conv_micro']
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(
        file=str(path), custom_load=True, num_classes=kwargs['num_classes']), **kwargs)
    h, w = spec['input_crop']
    err = _rel_err(_forward(model, tensors['input'][..., :h, :w].float()), tensors['conv_micro.logits'])
    assert err <= RTOL, f'relative error {err:.3g} vs the official logits'
