"""Constructor arguments of the shared layers: a wrong type or value is a ``TypeError`` / ``ValueError`` naming the
argument, at construction.

Each case here failed before (found by mutating the arguments the tiny models build their layers with): a zero or
negative width reached ``head_dim ** -0.5`` (ZeroDivisionError) or ``torch.empty`` (RuntimeError), a NaN dropout
passed the range checks and failed in the first training forward (or was taken as no dropout under SDPA), a float
kernel, dilation, patch, window or top-k size was truncated by ``int()`` or reached ``torch.topk`` / ``avg_pool2d``,
a one-entry ``grid_size`` raised ``IndexError``, and an infinite or NaN ratio or norm epsilon overflowed or gave NaN.
"""
import inspect
import math
import typing

import pytest
import torch.nn as nn

from zoo import layers
from zoo.layers import (
    AgentAttention,
    AgentSpatialReductionAttentionCl,
    BiLevelRoutingAttention,
    BiLevelRoutingAttention2d,
    FlowAttention,
    HiLoAttentionCl,
    InLineAttention,
    MbConvBlock2d,
    NeighborhoodAttention2d,
    PartitionAttentionCl,
    PatchEmbed2d,
    PatchEmbedCl,
    PointwiseConv2d,
    PreNormBlockCl,
    QkvLinear,
    RalaAttention2d,
    RegionRouter,
    RpbAttention2d,
    SpatialReductionAttentionCl,
)
from zoo.layers._checks import check_number, check_size_pair

NAN = math.nan

# (layer, valid keyword arguments) for every layer with heads and dropouts
ATTENTION = {
    'agent': (AgentAttention, dict(dim=32, num_heads=2, agent_num=4, resolution=(4, 4))),
    'agent_sr': (AgentSpatialReductionAttentionCl, dict(dim=32, num_heads=2, agent_num=4, resolution=(4, 4))),
    'rpb': (RpbAttention2d, dict(dim=32, num_heads=2, grid_size=(4, 4))),
    'hilo': (HiLoAttentionCl, dict(dim=32, num_heads=2)),
    'inline': (InLineAttention, dict(dim=32, num_heads=2)),
    'na': (NeighborhoodAttention2d, dict(dim=32, num_heads=2, kernel_size=3)),
    'partition': (PartitionAttentionCl, dict(dim=32, dim_head=16)),
    'sra': (SpatialReductionAttentionCl, dict(dim=32, num_heads=2)),
    'flow': (FlowAttention, dict(dim=32, num_heads=2)),
    'rala': (RalaAttention2d, dict(dim=32, num_heads=2)),
    'bra': (BiLevelRoutingAttention, dict(dim=32, num_heads=2, n_win=2, topk=2)),
    'bra2d': (BiLevelRoutingAttention2d, dict(dim=32, num_heads=2, n_win=2, topk=2)),
}
WITH_DROPS = ('agent', 'agent_sr', 'rpb', 'hilo', 'inline', 'partition', 'sra')


@pytest.mark.parametrize('key', sorted(ATTENTION))
def test_attention_widths_are_checked(key):
    cls, kwargs = ATTENTION[key]
    cls(**kwargs)  # the valid arguments build
    if 'num_heads' not in kwargs:  # PartitionAttentionCl: heads from dim_head
        return
    for dim, error in [(0, ValueError), (-32, ValueError), (32.0, TypeError)]:
        with pytest.raises(error, match=rf'^dim must be an int >= 1, got dim={dim}$'):
            cls(**dict(kwargs, dim=dim))
    with pytest.raises(ValueError, match=r'^num_heads must be an int >= 1, got num_heads=0$'):
        cls(**dict(kwargs, num_heads=0))


@pytest.mark.parametrize('key', WITH_DROPS)
@pytest.mark.parametrize('arg', ['attn_drop', 'proj_drop'])
@pytest.mark.parametrize('value', [NAN, 1.0, -0.1])
def test_attention_dropouts_are_checked(key, arg, value):
    cls, kwargs = ATTENTION[key]
    with pytest.raises(ValueError, match=rf'^{arg} must be a number in \[0, 1\), got {arg}={value}$'):
        cls(**dict(kwargs, **{arg: value}))


def test_neighborhood_and_routing_sizes_are_ints():
    with pytest.raises(TypeError, match=r'^dilation must be an int or a pair of ints >= 1, got dilation=1.5$'):
        NeighborhoodAttention2d(32, 2, kernel_size=3, dilation=1.5)
    with pytest.raises(TypeError, match=r'^kernel_size must be an int or a pair of ints >= 1'):
        NeighborhoodAttention2d(32, 2, kernel_size=(3, 3.0))
    with pytest.raises(ValueError, match=r'^proj_drop must be a number in \[0, 1\), got proj_drop=nan$'):
        NeighborhoodAttention2d(32, 2, kernel_size=3, proj_drop=NAN)
    for cls in (BiLevelRoutingAttention, BiLevelRoutingAttention2d):
        with pytest.raises(TypeError, match=r'^n_win must be an int >= 1, got n_win=1.5$'):
            cls(32, num_heads=2, n_win=1.5, topk=2)
        with pytest.raises(TypeError, match=r'^topk must be an int >= 1, got topk=1.5$'):
            cls(32, num_heads=2, n_win=2, topk=1.5)
    with pytest.raises(TypeError, match=r'^topk must be an int >= 1, got topk=1.5$'):
        RegionRouter(16, topk=1.5)
    with pytest.raises(ValueError, match=r'^qk_dim must be an int >= 1, got qk_dim=0$'):
        RegionRouter(0, topk=1)
    with pytest.raises(ValueError, match=r'^qk_dim must be an int >= 1, got qk_dim=-1$'):
        QkvLinear(16, -1)
    with pytest.raises(ValueError, match=r'^grid_size must be an int or a pair of ints, got grid_size=\(16,\)$'):
        RpbAttention2d(32, 2, grid_size=(16,))
    with pytest.raises(TypeError, match=r'^num_prefix_tokens must be an int >= 0, got num_prefix_tokens=1.5$'):
        InLineAttention(32, 2, num_prefix_tokens=1.5)


def test_convs_blocks_and_stems_are_checked():
    for arg in ('in_channels', 'out_channels'):
        with pytest.raises(ValueError, match=rf'^{arg} must be an int >= 1, got {arg}=0$'):
            PointwiseConv2d(**dict(dict(in_channels=16, out_channels=16), **{arg: 0}))
    for cls in (PatchEmbed2d, PatchEmbedCl):
        with pytest.raises(TypeError, match=r'^patch_size must be an int or a pair of ints >= 1, got patch_size=1.5$'):
            cls(patch_size=1.5)
    for arg, value in [('expand_ratio', math.inf), ('se_ratio', math.inf), ('se_ratio', NAN), ('norm_eps', NAN),
                       ('norm_eps', -1.0), ('norm_eps', 0.0)]:
        with pytest.raises(ValueError, match=rf'^{arg} must be a number (>|>=) 0, got {arg}={value}$'):
            MbConvBlock2d(16, 16, **{arg: value})
    with pytest.raises(TypeError, match=r"^norm_eps must be a number > 0, got norm_eps='x'$"):
        MbConvBlock2d(16, 16, norm_eps='x')
    with pytest.raises(ValueError, match=r'^proj_drop must be a number in \[0, 1\), got proj_drop=nan$'):
        PreNormBlockCl(32, nn.Identity, proj_drop=NAN)
    with pytest.raises(ValueError, match=r'^mlp_ratio must be a number > 0, got mlp_ratio=inf$'):
        PreNormBlockCl(32, nn.Identity, mlp_ratio=math.inf)


def test_check_number_and_size_pair():
    check_number('x', 3, 1, integer=True)
    check_number('x', None, 1, optional=True)
    check_number('p', 0.0, 0, 1, high_open=True)
    for value, error, match in [(True, TypeError, r'x must be an int >= 1, got x=True'),
                                ('3', TypeError, r"x must be an int >= 1, got x='3'"),
                                (0, ValueError, r'x must be an int >= 1, got x=0')]:
        with pytest.raises(error, match=match):
            check_number('x', value, 1, integer=True)
    with pytest.raises(ValueError, match=r'p must be a number in \[0, 1\), got p=1'):
        check_number('p', 1, 0, 1, high_open=True)
    with pytest.raises(ValueError, match=r'p must be a number in \(0, 1\] \(or None\), got p=inf'):
        check_number('p', math.inf, 0, 1, low_open=True, optional=True)
    assert check_size_pair('k', 3) == (3, 3) and check_size_pair('k', [3, 5]) == (3, 5)
    with pytest.raises(ValueError, match=r'k must be an int or a pair of ints >= 2, got k=\(3, 1\)'):
        check_size_pair('k', (3, 1), low=2)


# every shared layer with a bool argument, with valid keyword arguments
WITH_BOOLS = {
    **ATTENTION,
    'downsample': (layers.ConvDownsample2d, dict(dim=8)),
    'conv_ffn': (layers.ConvFfnCl, dict(in_features=8)),
    'conv_stem': (layers.ConvStem2d, dict()),
    'deform_conv': (layers.DeformConv2dPack, dict(in_channels=4, out_channels=4, kernel_size=3)),
    'dwconv': (layers.DwConv2d, dict(dim=8)),
    'dwconv_cl': (layers.DwConvCl, dict(dim=8)),
    'cpe': (layers.Cpe2d, dict(dim=8)),
    'cpe_cl': (layers.CpeCl, dict(dim=8)),
    'mbconv': (layers.MbConvBlock2d, dict(in_chs=8, out_chs=8)),
    'patch_embed': (layers.PatchEmbed2d, dict()),
    'pointwise': (layers.PointwiseConv2d, dict(in_channels=4, out_channels=4)),
    'qkv_linear': (layers.QkvLinear, dict(dim=8, qk_dim=8)),
    'router': (layers.RegionRouter, dict(qk_dim=8, topk=2)),
}


def _bool_arguments(cls):
    """The bool-annotated arguments of the constructor ``cls`` runs."""
    return [name for name, hint in typing.get_type_hints(cls.__init__).items() if hint is bool]


def test_every_layer_with_a_bool_argument_is_listed():
    classes = [getattr(layers, n) for n in dir(layers) if inspect.isclass(getattr(layers, n))]
    with_bools = {c for c in classes if c.__module__.startswith('zoo.layers') and _bool_arguments(c)}
    assert not with_bools - {cls for cls, _ in WITH_BOOLS.values()}


@pytest.mark.parametrize('key', sorted(WITH_BOOLS))
def test_bool_arguments_take_only_bools(key):
    """A string or number for a bool argument is a TypeError naming it (``qkv_bias='False'`` built a bias)."""
    cls, kwargs = WITH_BOOLS[key]
    names = _bool_arguments(cls)
    if not names:  # a layer of the attention table without one
        return
    for name in names:
        for bad in ('False', 0, None):
            with pytest.raises(TypeError, match=rf'^{name} must be a bool, got {name}={bad!r}$'):
                cls(**dict(kwargs, **{name: bad}))
