"""The official LITv2 (ziplab/LITv2 ``classification/models``) as a ``bench.models`` peer: ``official:litv2/<name>``.

Needs a checkout at ``$ZOO_OFFICIAL_ROOT/LITv2`` (``git clone https://github.com/ziplab/LITv2``). The official
deformable token merging imports NVIDIA apex and a compiled ``DCN`` extension at import time; as in
``tests/fixtures/make_litv2_fixtures.py`` both are stubbed and the DCN function is ``torchvision.ops.deform_conv2d``
(same parameters, same result; the official CUDA/C++ kernel is not measured). The official model asserts its
``img_size`` (224 here, the variants' training size).

    python -m bench.models --official-root /path/to/checkouts --models litv2_small \
        --peers swin_tiny_patch4_window7_224 official:litv2/litv2_small
"""
from __future__ import annotations

import sys
import types

import torch.nn as nn
from torchvision.ops import deform_conv2d

from .official import official_root

# zoo name -> the official config (classification/configs/litv2-*.yaml over config.py's defaults)
CONFIGS = {
    'litv2_small': dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    'litv2_medium': dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    'litv2_base': dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
}
NAMES = tuple(CONFIGS)
_CACHE = {}


class _TorchvisionDeformConv2dFunction:
    """``DeformConv2dFunction.apply`` of the official DCN extension, on ``torchvision.ops.deform_conv2d``."""

    @staticmethod
    def apply(input, offset, weight, bias, stride, padding, dilation, group, deformable_groups, im2col_step):
        if group != 1 or deformable_groups != 1:
            raise ValueError('the stand-in covers the one-group DeformConv2dPack that LITv2 uses')
        return deform_conv2d(input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation)


def _official_litv2_class():
    """The official ``LITv2`` class; its generic top-level packages (``models``, ``mm_modules``) are removed from
    ``sys.modules`` again after the import, so other official peers can import theirs."""
    if 'LITv2' in _CACHE:
        return _CACHE['LITv2']
    root = official_root() / 'LITv2' / 'classification'
    if not (root / 'models' / 'litv2.py').is_file():
        raise ValueError(f'no official LITv2 checkout at {root.parent} (classification/models/litv2.py)')
    apex = types.ModuleType('apex')
    apex.amp = types.SimpleNamespace(float_function=lambda f: f)
    stubs = {'apex': apex, 'DCN': types.ModuleType('DCN')}
    generic = ('models', 'mm_modules')
    saved = {k: v for k, v in sys.modules.items() if k.split('.')[0] in (*generic, *stubs)}
    for k in saved:
        del sys.modules[k]
    sys.modules.update(stubs)
    sys.path.insert(0, str(root))
    try:
        import mm_modules.DCN.modules.deform_conv2d as dcn
        import models.litv2 as litv2
        dcn.DeformConv2dFunction = _TorchvisionDeformConv2dFunction
        _CACHE['LITv2'] = litv2.LITv2
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k.split('.')[0] in (*generic, *stubs)]:
            del sys.modules[k]
        sys.modules.update(saved)
    return _CACHE['LITv2']


def build(name: str, num_classes: int = 1000, drop_path_rate: float = 0.) -> nn.Module:
    """The official LITv2 model of zoo variant ``name`` at 224 px (alpha 0.9, local windows 0/0/2/1)."""
    if name not in CONFIGS:
        raise ValueError(f'bench.official_litv2 builds {sorted(CONFIGS)}, not {name!r}')
    return _official_litv2_class()(
        img_size=224, num_classes=num_classes, drop_path_rate=drop_path_rate, alpha=0.9, local_ws=[0, 0, 2, 1],
        **CONFIGS[name])
