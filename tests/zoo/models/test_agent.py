"""Agent-Swin / Agent-PVT / Agent-DeiT: exact official parameter counts, block layout per attention-type string,
the checkpoint filter and its errors, options and bad arguments.

The official logits are checked in ``test_official_fixtures.py``; the timm contract in ``test_contract.py``; the
GMACs of the README rows in ``test_gmacs.py``.
"""
import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
from zoo.layers import AgentAttention, AgentSpatialReductionAttentionCl
from zoo.models._swin_like import SwinWindowAttentionCl
from zoo.models.agent import checkpoint_filter_fn

# sum(p.numel()) of the official classification models (LeapLabTHU/Agent-Attention @207ce3e, 1000 classes), as
# recorded in the project's model anchors (paper_table.csv, params_exact_official_code)
OFFICIAL_PARAMS = {
    'agent_deit_tiny': 6_015_640,
    'agent_deit_small': 22_647_112,
    'agent_deit_small_448': 23_070_472,
    'agent_deit_base': 87_204_904,
    'agent_pvt_tiny': 11_570_352,
    'agent_pvt_small': 20_635_066,
    'agent_pvt_medium': 35_921_746,
    'agent_pvt_medium_256': 36_083_682,
    'agent_pvt_large': 48_738_180,
    'agent_swin_tiny': 28_902_964,
    'agent_swin_small': 49_666_684,
    'agent_swin_small_288': 49_707_964,
    'agent_swin_base': 88_095_096,
    'agent_swin_base_384': 88_305_016,
}


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_official_param_count(name):
    assert _params(timm.create_model(name, device='meta')) == OFFICIAL_PARAMS[name]


def _kinds(model):
    return [''.join('A' if isinstance(b.attn, AgentAttention) else 'B' for b in s.blocks) for s in model.stages]


@pytest.mark.parametrize('name, kinds, windows', [
    ('agent_swin_tiny', ['AA', 'AA', 'AAAAAA', 'BB'], 7),
    ('agent_swin_small', ['AA', 'AA', 'B' * 18, 'BB'], 7),
    ('agent_swin_small_288', ['AA', 'AA', 'B' * 18, 'BB'], 9),
    ('agent_swin_base', ['AA', 'AA', 'AA' + 'B' * 16, 'BB'], 7),
    ('agent_swin_base_384', ['AA', 'AA', 'AA' + 'B' * 16, 'BB'], 12),
])
def test_swin_layout(name, kinds, windows):
    """Attention-type strings: agent blocks global over their stage (bias sizes = stage map), Swin window blocks
    of max(7, WINDOW_SIZE // 8) with shift on odd indices unless the window covers the stage."""
    model = timm.create_model(name, device='meta')
    assert _kinds(model) == kinds
    res = model.cfg.resolutions()
    for s, stage in enumerate(model.stages):
        for i, block in enumerate(stage.blocks):
            attn = block.attn
            if isinstance(attn, AgentAttention):
                assert attn.resolution == res[s] and attn.agent_num == (9, 16, 49, 49)[s]
            else:
                assert isinstance(attn, SwinWindowAttentionCl)
                w = min(windows, res[s][0])
                assert attn.window_size == (w, w)
                covers = res[s][0] <= windows
                assert attn.shift_size == (0 if covers or i % 2 == 0 else w // 2)


def test_deit_base_agents_in_first_four_blocks():
    model = timm.create_model('agent_deit_base', device='meta')
    agent = [isinstance(b.attn, AgentAttention) for b in model.blocks]
    assert agent == [True] * 4 + [False] * 8
    assert model.blocks[0].attn.agent_num == 81 and model.blocks[0].attn.resolution == (14, 14)
    assert timm.create_model('agent_deit_small_448', device='meta').blocks[11].attn.resolution == (28, 28)


def test_pvt_has_no_final_norm_and_global_agent_stages():
    model = timm.create_model('agent_pvt_small', device='meta')
    assert isinstance(model.norm, torch.nn.Identity)
    for s, (stage, res) in enumerate(zip(model.stages, [(56, 56), (28, 28), (14, 14), (7, 7)])):
        for block in stage.blocks:
            assert isinstance(block.attn, AgentSpatialReductionAttentionCl)
            assert block.attn.resolution == res and block.attn.sr is None
            assert block.attn.agent_num == (9, 16, 49, 49)[s]


def _official_swin_keys(model):
    """Our state dict in the official Agent-Swin layout (inverse of the filter, written independently)."""
    out = {}
    for k, v in model.state_dict().items():
        k2 = k.replace('.rel_pos.relative_position_bias_table', '.relative_position_bias_table')
        if k2.startswith('stages.'):
            i, rest = int(k2.split('.')[1]), k2.split('.', 2)[2]
            k2 = f'layers.{i - 1}.{rest}' if rest.startswith('downsample.') else f'layers.{i}.{rest}'
        k2 = k2.replace('head.fc.', 'head.')
        out[k2] = v
    # official buffers that the filter must drop
    out['layers.3.blocks.0.attn.relative_position_index'] = torch.zeros(49, 49, dtype=torch.long)
    return out


def test_swin_filter_roundtrip_and_errors():
    torch.manual_seed(0)
    model = timm.create_model('agent_swin_test').eval()
    official = _official_swin_keys(model)
    assert any(k.startswith('layers.0.downsample') or k.startswith('layers.2.downsample') for k in official)
    converted = checkpoint_filter_fn({'model': official}, model)
    fresh = timm.create_model('agent_swin_test').eval()
    fresh.load_state_dict(converted)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(fresh(x), model(x))
    # our own layout passes unchanged
    assert checkpoint_filter_fn(model.state_dict(), model).keys() == model.state_dict().keys()
    bad = dict(official)
    bad.pop('layers.1.blocks.0.attn.an_bias')
    with pytest.raises(ValueError, match='missing keys.*an_bias'):
        checkpoint_filter_fn(bad, model)


def test_pvt_filter_roundtrip():
    torch.manual_seed(0)
    model = timm.create_model('agent_pvt_test').eval()
    official = {}
    for k, v in model.state_dict().items():
        if k.startswith('patch_embed.'):
            k = 'patch_embed1.' + k[len('patch_embed.'):]
        elif k.startswith('stages.'):
            _, i, kind, rest = k.split('.', 3) if k.count('.') >= 3 else (*k.split('.'), '')
            i = int(i)
            k = {'downsample': f'patch_embed{i + 1}.{rest}', 'blocks': f'block{i + 1}.{rest}'}.get(
                kind, f'pos_embed{i + 1}')
        k = k.replace('head.fc.', 'head.')
        official[k] = v
    assert 'pos_embed3' in official and 'block2.1.attn.na_bias' in official and 'patch_embed4.proj.weight' in official
    fresh = timm.create_model('agent_pvt_test').eval()
    fresh.load_state_dict(checkpoint_filter_fn(official, fresh))
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(fresh(x), model(x))


def test_deit_filter_resamples_pos_embed():
    model = timm.create_model('agent_deit_test', img_size=96)
    small = timm.create_model('agent_deit_test')
    out = checkpoint_filter_fn(small.state_dict(), model)
    assert out['pos_embed'].shape == model.pos_embed.shape == (1, 1 + 6 * 6, 32)
    # the row / column agent biases follow the grid (linear interpolation along their axis)
    assert out['blocks.0.attn.ah_bias'].shape == model.blocks[0].attn.ah_bias.shape == (1, 2, 4, 6, 1)
    assert out['blocks.0.attn.wa_bias'].shape == (1, 2, 1, 6, 4)
    model.load_state_dict(out)
    with pytest.raises(ValueError, match='unexpected keys'):
        checkpoint_filter_fn({**small.state_dict(), 'blocks.0.attn.extra': torch.zeros(1)}, small)


def test_any_input_size_and_non_square():
    for name in ('agent_swin_test', 'agent_pvt_test', 'agent_deit_test'):
        model = timm.create_model(name).eval()
        for size in ((64, 64), (50, 77), (96, 40)):
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 1000) and torch.isfinite(out).all(), (name, size)


def test_deit_fixed_size_option():
    model = timm.create_model('agent_deit_test', dynamic_img_size=False)
    model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match='grid'):
        model(torch.randn(1, 3, 96, 96))


def test_options_and_bad_arguments():
    assert timm.create_model('agent_swin_test', agent_num=(9, 9, 9, 9)).stages[1].blocks[0].attn.agent_num == 9
    with pytest.raises(ValueError, match='agent_num'):
        timm.create_model('agent_swin_test', agent_num=(8, 9, 9, 9))
    with pytest.raises(ValueError, match='agent_num'):
        timm.create_model('agent_deit_test', agent_num=(4, 4))
    with pytest.raises(ValueError, match='agent_sr_ratios'):
        timm.create_model('agent_pvt_test', agent_sr_ratios=(1, 1, 0, 1))
    with pytest.raises(ValueError, match='attn_type'):
        timm.create_model('agent_swin_test', attn_type='AAIB')
    with pytest.raises(ValueError, match='attn_type'):
        timm.create_model('agent_swin_test', attn_type='AAMB')
    with pytest.raises(ValueError, match='family_depth'):
        timm.create_model('agent_deit_test', family_depth=9)
    with pytest.raises(ValueError, match='global_pool'):
        timm.create_model('agent_deit_test', global_pool='max')
    # the official 'AAAB' at another window: agent blocks on shifted windows when the window is below the stage
    model = timm.create_model('agent_swin_test', window_size=8, attn_type='AABB')
    assert type(model.stages[0].blocks[1].attn).__name__ == 'WindowedCl'
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize('size, win, shift', [((14, 14), (7, 7), (3, 3)), ((10, 13), (4, 4), (2, 2)),
                                              ((9, 9), (4, 4), (0, 0)), ((8, 8), (4, 4), (0, 0))])
def test_swin_window_mask_is_swin_mask_plus_padding(size, win, shift):
    """The scriptable mask of the Swin window blocks: Swin's shifted-window mask (window_attn_mask) plus -inf on the
    keys that padding added (none when neither applies)."""
    from zoo.layers import padded_size, window_attn_mask, window_partition
    from zoo.models._swin_like import _window_mask

    mask = _window_mask(size[0], size[1], win, shift, torch.device('cpu'), torch.float32)
    expected = window_attn_mask(size, win, shift) if any(shift) else None
    expected = None if expected is None else expected[:, None]
    if padded_size(size, win) != size:
        real = window_partition(torch.ones(1, *size, 1), win, shift).flatten(1)
        pad = torch.zeros_like(real).masked_fill(real == 0, float('-inf'))[:, None, None, :]
        expected = pad if expected is None else expected + pad
    if expected is None:
        assert mask is None
    else:
        torch.testing.assert_close(mask, expected)


@pytest.mark.parametrize('size', [(3, 5), (5, 9), (7, 7), (8, 8), (12, 6), (14, 14), (17, 10)])
@pytest.mark.parametrize('window, shift', [((7, 7), 0), ((7, 7), 3), ((4, 6), 2)])
def test_swin_window_attention_symbolic_path_equals_eager(size, window, shift):
    """The path taken under torch.export (ONNX with a dynamic image size), which turns the window clamp, the shift
    on/off choice and the padding mask into tensor arithmetic, computes what the eager forward does at every size:
    maps smaller than, equal to and larger than the window, divisible or not, with and without a shift."""
    torch.manual_seed(0)
    attn = SwinWindowAttentionCl(16, 2, window, shift).eval()
    with torch.no_grad():
        attn.rel_pos.relative_position_bias_table.normal_(std=1.)  # a bias large enough to matter
        x = torch.randn(2, *size, 16) * 3
        torch.testing.assert_close(attn._forward_symbolic(x), attn(x), atol=1e-5, rtol=1e-5)


def test_windowed_family_block_refuses_a_symbolic_size():
    """A family block on shifted windows sees the clamped window, which no single graph can express: torch.export
    with a dynamic image size stops with a clear error (export_onnx then falls back to a static height and width)."""
    model = timm.create_model('agent_swin_test', window_size=8, attn_type='AABB').eval()
    windowed = model.stages[0].blocks[1].attn
    x = torch.randn(1, 16, 16, windowed.layer.dim)
    dims = ({1: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO},)
    with pytest.raises(Exception, match='static height and width') as info:
        torch.export.export(windowed, (x,), dynamic_shapes=dims)
    assert 'ValueError' in repr(info.value) or isinstance(info.value, ValueError)
