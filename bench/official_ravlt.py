"""The official RAVLT (qhfan/RALA ``classfication/RALA.py``) as a ``bench.models`` peer: ``official:ravlt/<name>``.

Needs a checkout at ``$ZOO_OFFICIAL_ROOT/RALA`` (``git clone https://github.com/qhfan/RALA``). ``RALA.py`` imports
``einops`` and, for FLOP counting the model never calls, ``fvcore``: a stand-in module is used where fvcore is not
installed (a GPU machine without a registry).

    python -m bench.models --official-root /path/to/checkouts --models ravlt_small \
        --peers swin_tiny_patch4_window7_224 official:ravlt/ravlt_small
"""
from __future__ import annotations

import importlib.util
import sys
import types

import torch.nn as nn

from .official import official_root

# zoo name -> the arguments of the official builder (RAVLT_T/S/B/L), drop_path_rate left to the caller
_COMMON = dict(mlp_ratios=[3.5] * 4, projection=1024, layerscales=[True] * 4)
CONFIGS = {
    'ravlt_tiny': dict(embed_dims=[64, 128, 256, 512], depths=[2, 2, 6, 2], num_heads=[1, 2, 4, 8],
                       layer_init_values=[1, 1, 1, 1], **_COMMON),
    'ravlt_small': dict(embed_dims=[64, 128, 320, 512], depths=[3, 5, 9, 3], num_heads=[1, 2, 5, 8],
                        layer_init_values=[1, 1, 1, 1], **_COMMON),
    'ravlt_base': dict(embed_dims=[96, 192, 384, 512], depths=[4, 6, 12, 6], num_heads=[1, 2, 6, 8],
                       layer_init_values=[1, 1, 1e-6, 1e-6], **_COMMON),
    'ravlt_large': dict(embed_dims=[96, 192, 448, 640], depths=[4, 7, 19, 8], num_heads=[1, 2, 7, 10],
                        layer_init_values=[1e-6] * 4, **_COMMON),
}
NAMES = tuple(CONFIGS)
_CACHE = {}


def _fvcore_stand_in() -> dict:
    """``sys.modules`` entries standing in for fvcore when it is not installed: RALA.py imports two names from it at
    the top but uses them only in its FLOP-counting ``__main__``."""
    if importlib.util.find_spec('fvcore') is not None:
        return {}

    def not_installed(*args, **kwargs):
        raise RuntimeError('fvcore is not installed (stand-in of bench.official_ravlt)')

    fvcore, fvcore_nn = types.ModuleType('fvcore'), types.ModuleType('fvcore.nn')
    fvcore_nn.FlopCountAnalysis = fvcore_nn.flop_count_table = not_installed
    fvcore.nn = fvcore_nn
    return {'fvcore': fvcore, 'fvcore.nn': fvcore_nn}


def _official_module():
    if 'RALA' in _CACHE:
        return _CACHE['RALA']
    folder = official_root() / 'RALA' / 'classfication'
    if not (folder / 'RALA.py').is_file():
        raise ValueError(f'no official RALA checkout at {folder.parent} (classfication/RALA.py)')
    stand_in = _fvcore_stand_in()
    sys.modules.update(stand_in)
    sys.path.insert(0, str(folder))
    try:
        import RALA
    finally:
        sys.path.remove(str(folder))
        for name in stand_in:
            del sys.modules[name]
    _CACHE['RALA'] = RALA
    return RALA


def build(name: str, num_classes: int = 1000, drop_path_rate: float = 0.) -> nn.Module:
    """The official RAVLT model of zoo variant ``name`` (its builder's configuration)."""
    if name not in CONFIGS:
        raise ValueError(f'bench.official_ravlt builds {sorted(CONFIGS)}, not {name!r}')
    return _official_module().RAVLT(num_classes=num_classes, drop_path_rate=drop_path_rate, **CONFIGS[name])
