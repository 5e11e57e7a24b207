"""The official Flowformer classifier (thuml/Flowformer ``Flowformer_CV/flowformer.py``, built as ``main.py`` does) as
a ``bench.models`` peer: ``official:flowformer/flowformer_cv``.

Needs a checkout at ``$ZOO_OFFICIAL_ROOT/Flowformer`` (``git clone https://github.com/thuml/Flowformer``). The file's
unused ``cv2`` and ``numpy.lib.arraypad`` imports are stubbed (as in ``tests/fixtures/make_flowformer_fixtures.py``).
The official model runs at its ``img_size`` only (224 here).

    python -m bench.models --official-root /path/to/checkouts --models flowformer_cv \
        --peers swin_tiny_patch4_window7_224 official:flowformer/flowformer_cv
"""
from __future__ import annotations

import sys
import types
from functools import partial

import torch.nn as nn

from .official import official_root

NAMES = ('flowformer_cv',)
_CACHE = {}


def _official_module():
    if 'flowformer' in _CACHE:
        return _CACHE['flowformer']
    folder = official_root() / 'Flowformer' / 'Flowformer_CV'
    if not (folder / 'flowformer.py').is_file():
        raise ValueError(f'no official Flowformer checkout at {folder.parent} (Flowformer_CV/flowformer.py)')
    sys.modules.setdefault('cv2', types.ModuleType('cv2'))
    try:
        import numpy.lib.arraypad  # noqa: F401
    except ImportError:
        arraypad = types.ModuleType('numpy.lib.arraypad')
        arraypad.pad = None
        sys.modules['numpy.lib.arraypad'] = arraypad
    sys.path.insert(0, str(folder))
    try:
        import flowformer
    finally:
        sys.path.remove(str(folder))
    _CACHE['flowformer'] = flowformer
    return flowformer


def build(name: str, num_classes: int = 1000, drop_path_rate: float = 0.) -> nn.Module:
    """The official Flowformer of ``main.py`` (dims 96-768, depths 3/3/10/3, layer scale 1e-5) at 224 px."""
    if name not in NAMES:
        raise ValueError(f'bench.official_flowformer builds {list(NAMES)}, not {name!r}')
    return _official_module().Flowformer(
        img_size=224, patch_size=4, num_classes=num_classes, embed_dim=[96, 192, 384, 768], depth=[3, 3, 10, 3],
        mlp_ratio=[4, 4, 4, 4], norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=drop_path_rate,
        init_values=1e-5)
