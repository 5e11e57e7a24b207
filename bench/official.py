"""Official implementations as benchmark peers, built from a local checkout of the official repository.

The official code is never part of this project: a family's peer module ``bench/official_<family>.py`` imports it
from ``<root>/<Repo>`` (a checkout the user fetched, e.g. ``git clone https://github.com/LeapLabTHU/Agent-Attention``)
and exposes ``build(name: str, num_classes: int = 1000, drop_path_rate: float = 0.) -> nn.Module`` plus
``NAMES``, the zoo model names it can build the official twin of. ``bench.models`` accepts such a peer as
``official:<family>/<name>``::

    python -m bench.models --official-root /path/to/checkouts --models agent_swin_tiny \
        --peers swin_tiny_patch4_window7_224 official:agent/agent_swin_tiny

The root comes from ``--official-root`` or the ``ZOO_OFFICIAL_ROOT`` environment variable (inherited by the
peak-memory subprocess).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import re
from pathlib import Path
from typing import Optional

import torch.nn as nn

PREFIX = 'official:'
ROOT_ENV = 'ZOO_OFFICIAL_ROOT'
_NAME = re.compile(r'^official:(\w+)/(\w+)$')


def is_official(name: str) -> bool:
    return name.startswith(PREFIX)


def official_root() -> Path:
    """The directory holding the official checkouts (``ZOO_OFFICIAL_ROOT``); a clear error when it is unset."""
    root = os.environ.get(ROOT_ENV)
    if not root or not Path(root).is_dir():
        raise ValueError(f'official peers need {ROOT_ENV} (or --official-root) set to a directory of official '
                         f'checkouts, got {root!r}')
    return Path(root)


def build(name: str, num_classes: int = 1000, drop_path_rate: float = 0.) -> nn.Module:
    """The official model ``official:<family>/<zoo name>`` from the family's peer module."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f'an official peer is named official:<family>/<model>, got {name!r}')
    family, model = match.groups()
    try:
        module = importlib.import_module(f'bench.official_{family}')
    except ModuleNotFoundError as e:
        raise ValueError(f'no official peer module for family {family!r} (bench/official_{family}.py)') from e
    if model not in module.NAMES:
        raise ValueError(f'bench.official_{family} builds {sorted(module.NAMES)}, not {model!r}')
    return module.build(model, num_classes=num_classes, drop_path_rate=drop_path_rate)


def twin(model: str) -> Optional[str]:
    """``official:<family>/<model>`` when a family's peer module builds the official twin of ``model``; else None."""
    bench_dir = Path(__file__).parent
    for info in pkgutil.iter_modules([str(bench_dir)]):
        if info.name.startswith('official_'):
            module = importlib.import_module(f'bench.{info.name}')
            if model in module.NAMES:
                return f'{PREFIX}{info.name[len("official_"):]}/{model}'
    return None
