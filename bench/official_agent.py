"""The official Agent-Swin / Agent-PVT / Agent-DeiT (LeapLabTHU/Agent-Attention ``agent_transformer/models``) as
``bench.models`` peers: ``official:agent/<name>``.

Needs a checkout at ``$ZOO_OFFICIAL_ROOT/Agent-Attention`` (``git clone https://github.com/LeapLabTHU/Agent-Attention``).
As in ``tests/fixtures/make_agent_fixtures.py``, the model files are imported as modules of a stand-in package (the
official ``models/__init__.py`` imports the CSwin model) with an identity ``register_model`` while ``deit.py`` /
``agent_deit.py`` (timm 0.4.12 code) are imported, and Agent-DeiT is built through ``agent_deit.VisionTransformer``.
The official models run only at their ``img_size`` (the training size of each variant).

    python -m bench.models --official-root /path/to/checkouts --models agent_swin_tiny \
        --peers swin_tiny_patch4_window7_224 official:agent/agent_swin_tiny
"""
from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from functools import partial

import torch.nn as nn

from .official import official_root

_PACKAGE = 'bench_official_agent_models'
_SWIN = dict(
    agent_swin_tiny=dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=56,
                         attn_type='AAAB', img_size=224),
    agent_swin_small=dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=56,
                          attn_type='AABB', img_size=224),
    agent_swin_base=dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=56,
                         attn_type='AAMB2', img_size=224),
)
_PVT = dict(agent_pvt_tiny=(2, 2, 2, 2), agent_pvt_small=(3, 4, 6, 3), agent_pvt_medium=(3, 4, 18, 3),
            agent_pvt_large=(3, 8, 27, 3))
_DEIT = dict(
    agent_deit_tiny=dict(embed_dim=192, num_heads=3, agent_num=['49'] * 4),
    agent_deit_small=dict(embed_dim=384, num_heads=6, agent_num=['49'] * 4),
    agent_deit_base=dict(embed_dim=768, num_heads=12, agent_num=['81'] * 4, agent_layer=4),
)
NAMES = (*_SWIN, *_PVT, *_DEIT)
_CACHE = {}


def _modules():
    """The official ``agent_swin``, ``agent_pvt`` and ``agent_deit`` modules (imported once)."""
    if _CACHE:
        return _CACHE
    models = official_root() / 'Agent-Attention' / 'agent_transformer' / 'models'
    if not (models / 'agent_swin.py').is_file():
        raise ValueError(f'no official Agent-Attention checkout at {models.parents[1]} '
                         '(agent_transformer/models/agent_swin.py)')
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(models)]
    sys.modules[_PACKAGE] = package
    import timm.models.registry as registry
    register_model = registry.register_model
    registry.register_model = lambda fn: fn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            for name in ('agent_swin', 'agent_pvt', 'deit', 'agent_deit'):
                spec = importlib.util.spec_from_file_location(f'{_PACKAGE}.{name}', models / f'{name}.py')
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
                _CACHE[name] = module
    finally:
        registry.register_model = register_model
    return _CACHE


def build(name: str, num_classes: int = 1000, drop_path_rate: float = 0.) -> nn.Module:
    """The official model of zoo variant ``name`` at 224 px (the arguments ``models/build.py`` passes)."""
    if name not in NAMES:
        raise ValueError(f'bench.official_agent builds {sorted(NAMES)}, not {name!r}')
    mods = _modules()
    if name in _SWIN:
        return mods['agent_swin'].AgentSwinTransformer(
            num_classes=num_classes, drop_path_rate=drop_path_rate, agent_num=['9', '16', '49', '49'], **_SWIN[name])
    if name in _PVT:
        return mods['agent_pvt'].PyramidVisionTransformer(
            img_size=224, patch_size=4, embed_dims=[64, 128, 320, 512], num_heads=[1, 2, 5, 8],
            mlp_ratios=[8, 8, 4, 4], qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), depths=list(_PVT[name]),
            sr_ratios=[8, 4, 2, 1], num_classes=num_classes, drop_path_rate=drop_path_rate, agent_num=[9, 16, 49, 49],
            attn_type='AAAA', agent_sr_ratios='1111')
    return mods['agent_deit'].VisionTransformer(
        img_size=224, patch_size=16, depth=12, num_classes=num_classes, drop_path_rate=drop_path_rate, **_DEIT[name])
