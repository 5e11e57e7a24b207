"""Helpers shared by the model families: config overlays, intermediate-feature indices and checkpoint filters."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple, TypeVar, Union

import torch
import torch.nn as nn
from timm.models._features import feature_take_indices

__all__ = [
    'feature_take_indices', 'overlay_cfg', 'unwrap_state_dict', 'rename_keys', 'check_state_dict',
]

CfgT = TypeVar('CfgT')
Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]


def overlay_cfg(cfg: CfgT, kwargs: Dict[str, Any]) -> CfgT:
    """Return ``cfg`` with the fields named in ``kwargs`` replaced; those entries are popped from ``kwargs``.

    Args:
        cfg: a (frozen) dataclass instance.
        kwargs: constructor keyword arguments; the ones naming a field of ``cfg`` are consumed.
    """
    names = {f.name for f in dataclasses.fields(cfg)}
    overlay = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    return dataclasses.replace(cfg, **overlay) if overlay else cfg


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint saved plain, as ``{'model': ...}`` or as ``{'state_dict': ...}``.

    A ``module.`` prefix (DataParallel / DDP) is removed.

    Raises:
        ValueError: ``checkpoint`` is not a mapping of tensors after unwrapping.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'checkpoint must be a mapping of parameter names to tensors, got {type(checkpoint).__name__}')
    for wrapper in ('state_dict', 'model'):
        if wrapper in checkpoint and isinstance(checkpoint[wrapper], Mapping):
            checkpoint = checkpoint[wrapper]
            break
    bad = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f'checkpoint holds non-tensor entries {sorted(bad)[:8]}; expected a state dict')
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in checkpoint.items()}


def rename_keys(state_dict: Mapping[str, torch.Tensor], rules: Sequence[Rule]) -> Dict[str, torch.Tensor]:
    """Apply ``re.sub(pattern, repl, key)`` for every rule, in order, to every key.

    Raises:
        ValueError: two source keys map to the same target key.
    """
    out: Dict[str, torch.Tensor] = {}
    source: Dict[str, str] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if new in out:
            raise ValueError(f'checkpoint keys {source[new]!r} and {key!r} both map to {new!r}')
        out[new] = value
        source[new] = key
    return out


def check_state_dict(
        state_dict: Mapping[str, torch.Tensor],
        model: nn.Module,
        exempt: Iterable[str] = (),
) -> None:
    """Raise unless ``state_dict`` has exactly the keys and shapes of ``model.state_dict()``.

    Args:
        state_dict: converted checkpoint.
        model: target model.
        exempt: regexes of keys whose presence and shape are left to the loader (timm re-initialises or adapts
            the classifier and the first conv when ``num_classes`` / ``in_chans`` differ from the checkpoint).

    Raises:
        ValueError: naming the missing keys, the unexpected keys and the shape mismatches.
    """
    exempt = [re.compile(p) for p in exempt]

    def is_exempt(key: str) -> bool:
        return any(p.search(key) for p in exempt)

    target = model.state_dict()
    missing = sorted(k for k in target if k not in state_dict and not is_exempt(k))
    unexpected = sorted(k for k in state_dict if k not in target and not is_exempt(k))
    mismatched: List[str] = sorted(
        f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}'
        for k, v in state_dict.items()
        if k in target and not is_exempt(k) and tuple(v.shape) != tuple(target[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f'missing keys {_abbrev(missing)}')
        if unexpected:
            parts.append(f'unexpected keys {_abbrev(unexpected)}')
        if mismatched:
            parts.append(f'shape mismatches {_abbrev(mismatched)}')
        raise ValueError(f'checkpoint does not match {type(model).__name__}: ' + '; '.join(parts))


def _abbrev(items: List[str], limit: int = 12) -> str:
    shown = ', '.join(items[:limit])
    return f'[{shown}' + (f', ... ({len(items) - limit} more)]' if len(items) > limit else ']')
