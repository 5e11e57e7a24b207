"""The official InLine models (LeapLabTHU/InLine ``models/inline_{swin,pvt,deit}.py``) as ``bench.models`` peers:
``official:inline/<name>``.

Needs a checkout at ``$ZOO_OFFICIAL_ROOT/InLine`` (``git clone https://github.com/LeapLabTHU/InLine``). The three
model files are imported one by one (the ``models`` package's ``build.py`` also imports the CSwin model and
``einops``). ``inline_deit.py`` is written for timm 0.4.12: its ``_create_vision_transformer`` passes ``default_cfg=``
to timm 1.x's ``build_model_with_cfg``, which fails, so the DeiT models are built from its ``VisionTransformer``
class with the arguments of ``inline_deit_*`` (as ``tests/fixtures/make_inline_fixtures.py`` does). Arguments are
those ``models/build.py`` passes from ``cfgs/*.yaml``.

    python -m bench.models --official-root /path/to/checkouts --models inline_swin_tiny \
        --peers swin_tiny_patch4_window7_224 official:inline/inline_swin_tiny
"""
from __future__ import annotations

import copy
import importlib.util
import sys
import warnings

import timm.models._registry as _registry
import torch.nn as nn

from .official import official_root

_SWIN = dict(patch_size=4, mlp_ratio=4., qkv_bias=True)
_PVT = dict(img_size=224, attn_type='IIII', la_sr_ratios='1111')
# zoo name -> (official file, builder, arguments), drop_path_rate left to the caller
CONFIGS = {
    'inline_swin_tiny': ('inline_swin', 'InLineSwin', dict(
        img_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=56, attn_type='IIIS',
        **_SWIN)),
    'inline_swin_small': ('inline_swin', 'InLineSwin', dict(
        img_size=224, embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=56, attn_type='IISS',
        **_SWIN)),
    'inline_swin_base': ('inline_swin', 'InLineSwin', dict(
        img_size=224, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=56,
        attn_type='IIMS2', **_SWIN)),
    'inline_swin_base_384': ('inline_swin', 'InLineSwin', dict(
        img_size=384, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=96,
        attn_type='IIMS2', **_SWIN)),
    'inline_pvt_tiny': ('inline_pvt', 'inline_pvt_tiny', _PVT),
    'inline_pvt_small': ('inline_pvt', 'inline_pvt_small', _PVT),
    'inline_pvt_medium': ('inline_pvt', 'inline_pvt_medium', _PVT),
    'inline_pvt_large': ('inline_pvt', 'inline_pvt_large', _PVT),
    'inline_deit_tiny': ('inline_deit', 'VisionTransformer', dict(
        img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=6)),
    'inline_deit_small': ('inline_deit', 'VisionTransformer', dict(
        img_size=288, patch_size=16, embed_dim=320, depth=12, num_heads=10)),
    'inline_deit_base': ('inline_deit', 'VisionTransformer', dict(
        img_size=448, patch_size=16, embed_dim=384, depth=12, num_heads=12)),
    # InLine-DeiT-S built for 224 px (its cfg is 288 px; the official position embedding and InLine layers are fixed
    # to the built grid): the peer of inline_deit_small in a 224 px bench.models run
    'inline_deit_small_224': ('inline_deit', 'VisionTransformer', dict(
        img_size=224, patch_size=16, embed_dim=320, depth=12, num_heads=10)),
}
NAMES = tuple(CONFIGS)
_CACHE = {}


def _official_module(file: str):
    if file in _CACHE:
        return _CACHE[file]
    path = official_root() / 'InLine' / 'models' / f'{file}.py'
    if not path.is_file():
        raise ValueError(f'no official InLine checkout at {path.parents[1]} (models/{file}.py)')
    name = f'official_inline_{file}'
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # timm's register_model looks the module up
    # the official files register inline_deit_* / inline_pvt_* with timm under the zoo's own names: restore timm's
    # registry afterwards, so that create_model('inline_deit_small') still builds the zoo model in the same process
    saved = {k: copy.deepcopy(v) for k, v in vars(_registry).items() if k.startswith('_model') and isinstance(v, dict)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)  # timm 1.x's notes on the timm.models.layers imports
            warnings.filterwarnings('ignore', 'Overwriting .* in registry')
            spec.loader.exec_module(module)
    finally:
        for key, value in saved.items():
            getattr(_registry, key).clear()
            getattr(_registry, key).update(value)
    _CACHE[file] = module
    return module


def build(name: str, num_classes: int = 1000, drop_path_rate: float = 0.) -> nn.Module:
    """The official InLine model of zoo variant ``name`` (its cfg's arguments)."""
    if name not in CONFIGS:
        raise ValueError(f'bench.official_inline builds {sorted(CONFIGS)}, not {name!r}')
    file, builder, kwargs = CONFIGS[name]
    # inline_pvt_* fix patch 4, dims, heads, mlp ratios, qkv bias and LN eps themselves
    return getattr(_official_module(file), builder)(num_classes=num_classes, drop_path_rate=drop_path_rate, **kwargs)
