"""One way to build a model by name: the name check, the input size, ``timm.create_model``.

Training (:mod:`zoo.train`), the exporter (:mod:`zoo.weights.export`) and the benchmarks (``bench/``) build their
models here, so a misspelt name fails the same way everywhere and a model with a fixed input size is built for the
size it will be fed::

    from zoo.models import create_model, input_spec
    spec = input_spec('vitrpb_small')        # InputSpec(input_size=(3, 224, 224), fixed=True)
    model = create_model('vitrpb_small', input_size=256, num_classes=10)

Names are anything ``timm.create_model`` takes once ``zoo`` is imported: a registered architecture (with an
optional ``.tag``) or a source prefixed with ``hf-hub:``, ``local-dir:`` or ``timm/``.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import timm
import torch.nn as nn

__all__ = ['InputSpec', 'check_model_name', 'input_spec', 'create_model', 'read_export_config']

_SOURCE_PREFIXES = ('hf-hub:', 'hf_hub:', 'local-dir:', 'timm/')


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The input a model is registered for.

    Attributes:
        input_size: ``(C, H, W)`` of its pretrained config: the size to feed when none is chosen.
        fixed: True when it accepts only the size it was built for (timm's ``fixed_input_size``: absolute
            position embeddings or biases); :func:`create_model` builds such a model for the size it will be fed.
    """
    input_size: Tuple[int, int, int]
    fixed: bool


def check_model_name(model_name: str) -> None:
    """Raise ``ValueError`` naming close matches if ``model_name`` is not a model timm builds after ``import zoo``.

    Names with a source prefix (``hf-hub:``, ``local-dir:``, ``timm/``) are left to timm.
    """
    if model_name.startswith(_SOURCE_PREFIXES) or timm.is_model(model_name):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(model_name, names, n=8, cutoff=0.6)
    stem = model_name.split('_')[0]
    if len(stem) >= 3:
        close += [n for n in names if n.startswith(stem) and n not in close][:max(0, 8 - len(close))]
    hint = f' Close names: {", ".join(close)}.' if close else ''
    zoo = sys.modules.get('zoo')
    if zoo is not None and getattr(zoo, '__file__', None) is None:
        hint += (f' Note: zoo was imported as a namespace package from {list(zoo.__path__)} without running its '
                 f'__init__ (a stale editable install?), so its models are not registered: reinstall it '
                 f'(pip install -e .) or run from the repository root.')
    raise ValueError(
        f'model_name={model_name!r} is not a registered timm/zoo model.{hint} '
        f'List them with: python -c "import zoo, timm; print(timm.list_models(\'*{stem}*\'))"')


def input_spec(model_name: str) -> InputSpec:
    """The input size to feed ``model_name`` and whether it accepts only that size.

    A ``local-dir:`` export is read from its ``config.json``; an ``hf-hub:`` name is not looked up (no network):
    it gets timm's default ``(3, 224, 224)``, not fixed.

    Raises:
        ValueError: an unknown name (see :func:`check_model_name`).
    """
    check_model_name(model_name)
    cfg = None
    if model_name.startswith('local-dir:'):
        saved = read_export_config(model_name[len('local-dir:'):])
        if saved is not None:
            cfg = saved.get('pretrained_cfg') or {}
    elif not model_name.startswith(_SOURCE_PREFIXES):
        pretrained_cfg = timm.get_pretrained_cfg(model_name, allow_unregistered=True)
        cfg = pretrained_cfg.to_dict() if pretrained_cfg is not None else None
    cfg = cfg or {}
    return InputSpec(tuple(cfg.get('input_size') or (3, 224, 224)), bool(cfg.get('fixed_input_size', False)))


def read_export_config(folder: str) -> Optional[Dict[str, Any]]:
    """The ``config.json`` of a hub folder (``python -m zoo.weights export`` / ``convert``, timm's ``save_for_hf``:
    ``architecture``, ``num_classes``, ``pretrained_cfg`` ...), or None when the folder has none."""
    path = os.path.join(folder, 'config.json')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def create_model(
        model_name: str,
        input_size: Optional[Union[int, Sequence[int]]] = None,
        **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(model_name, **kwargs)`` after the name check, built for ``input_size`` if it must be.

    Args:
        model_name: a timm name after ``import zoo`` (see the module docstring).
        input_size: the size the model will be fed: ``S``, ``(H, W)`` or ``(C, H, W)``. A model with a fixed
            input size (:func:`input_spec`) is built for it (``img_size=(H, W)``); the others take any size and
            ignore it. An ``img_size`` in ``kwargs`` is passed as given and wins.
        **kwargs: ``timm.create_model`` arguments (``num_classes``, ``pretrained``, ``drop_path_rate``, ...).

    Raises:
        ValueError: an unknown name (with the close matches), or an ``input_size`` of another length or below 1.
        TypeError: an ``input_size`` that is not made of ints.
    """
    check_model_name(model_name)
    if input_size is not None:
        sequence = isinstance(input_size, (tuple, list))
        sizes = list(input_size) if sequence else [input_size]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in sizes):
            raise TypeError(f'input_size must be S, (H, W) or (C, H, W) of ints, got input_size={input_size!r}.')
        if (sequence and len(sizes) not in (2, 3)) or min(sizes) < 1:
            raise ValueError(f'input_size must be S, (H, W) or (C, H, W) of ints >= 1, got input_size={input_size!r}.')
        input_size = sizes[0] if len(sizes) == 1 else tuple(sizes)[-2:]
    if input_size is not None and 'img_size' not in kwargs and input_spec(model_name).fixed:
        kwargs['img_size'] = input_size
    return timm.create_model(model_name, **kwargs)
