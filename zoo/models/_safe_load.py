"""Read weight files without running code from them, pick a weight set, and load it with clear errors.

* :func:`read_checkpoint`: ``.safetensors`` through ``safetensors`` (no pickle at all); anything else through
  ``torch.load(weights_only=True)`` under :data:`SAFE_GLOBALS`, an explicit allow-list of the harmless non-tensor
  types real official checkpoints carry (training ``args`` as :class:`argparse.Namespace`, numpy scalars and dtypes
  in the optimizer / scheduler state or ``best_acc``). A pickle that references any other global (a class or a
  function: the way a pickle runs code) is refused with :class:`UnsafeCheckpointError` before anything in it runs.
  A truncated or unreadable file raises :class:`CheckpointReadError`.
* :func:`select_weights`: the one state dict to use from a file that holds several (``{'model', 'model_ema',
  'optimizer', ...}``): ``'model'`` or ``'ema'``, default the official loaders' choice (see :data:`WEIGHT_KEYS`).
* :func:`load_into`: a strict load whose error names the missing, unexpected and wrongly shaped keys.
"""
from __future__ import annotations

import argparse
import collections
import os
import pickle
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

__all__ = ['SAFE_GLOBALS', 'WEIGHT_KEYS', 'CheckpointReadError', 'UnsafeCheckpointError', 'read_checkpoint',
           'select_weights', 'load_into', 'read_weights']


class CheckpointReadError(ValueError):
    """The file is missing, truncated or not a checkpoint."""


class UnsafeCheckpointError(CheckpointReadError):
    """The file is a pickle that references code outside the allow-list; nothing in it was run."""


def _numpy_globals() -> List[Any]:
    """numpy's scalar reconstructor, ``ndarray`` and every dtype class: what pickled numpy scalars reference."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith('DType')]
    return [scalar, _reconstruct, np.ndarray, np.dtype, *dtype_classes]


# Harmless types found in released checkpoints besides tensors: training arguments (timm, DeiT, NAT, BiFormer
# scripts save ``args``), numpy scalars (``best_acc``, scheduler state), ordered dicts, and the builtins ``set`` /
# ``slice``. None of them runs code when unpickled.
SAFE_GLOBALS: Tuple[Any, ...] = (argparse.Namespace, collections.OrderedDict, collections.defaultdict, set, slice,
                                 *_numpy_globals())

# The name of each weight set in official files, in search order. Every official loader of the families here
# (NAT/DiNAT, BiFormer, and the DeiT/Swin/PVT-style training scripts the other families use) reads the raw
# ``model`` weights, so that is the default; ``ema`` is the user's choice.
WEIGHT_KEYS: Dict[str, Tuple[str, ...]] = {
    'model': ('model', 'state_dict', 'model_state', 'model_state_dict', 'net', 'module'),
    'ema': ('model_ema', 'state_dict_ema', 'ema', 'ema_state_dict', 'model_ema_state_dict', 'ema_model'),
}
DEFAULT_WEIGHTS = 'model'


def _is_safetensors(path: str) -> bool:
    if path.endswith('.safetensors'):
        return True
    with open(path, 'rb') as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then a JSON header starting with '{'
    return len(head) == 9 and head[8:9] == b'{' and not head.startswith(b'PK')


def read_checkpoint(path: str, map_location: str | torch.device = 'cpu') -> Any:
    """Read a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` file without running code from it.

    Returns:
        A dict of tensors (safetensors), or what the pickle holds (tensors, containers and :data:`SAFE_GLOBALS`).

    Raises:
        CheckpointReadError: no such file, or a truncated / corrupt / non-checkpoint file.
        UnsafeCheckpointError: a pickle referencing a type or function outside :data:`SAFE_GLOBALS`
            (the message names it); nothing from the file was executed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointReadError(f'no such file {path!r}')
    if _is_safetensors(path):
        from safetensors.torch import load_file
        try:
            return load_file(path, device=str(map_location))
        except Exception as e:  # SafetensorError: truncated header or data
            raise CheckpointReadError(f'{path!r} is not a readable safetensors file (truncated or corrupt?): '
                                      f'{e}') from None
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path)
        if names is None:
            raise CheckpointReadError(f'{path!r} is not a readable checkpoint (truncated or corrupt?): '
                                      f'{_first_line(e)}') from None
        found = ', '.join(names) if names else _first_line(e)
        raise UnsafeCheckpointError(
            f'{path!r} refused: the pickle references code outside the allow-list of safe types ({found}); it was '
            f'not run. Official checkpoints hold tensors, training args and numpy scalars only: a file that needs '
            f'more is not a plain weight file (re-save it as safetensors from a trusted environment).') from None
    except Exception as e:  # RuntimeError, EOFError, BadZipFile, KeyError, IndexError, struct.error ...: corrupt bytes
        raise CheckpointReadError(f'{path!r} is not a readable checkpoint (truncated or corrupt?): '
                                  f'{type(e).__name__}: {_first_line(e)}') from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _unsafe_globals(path: str) -> Optional[List[str]]:
    """The globals of a pickle that the allow-list does not cover (read by scanning, never by running)."""
    names = None
    if zipfile.is_zipfile(path):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            names = None
    if names is None:
        names = _scan_pickle_globals(path)
    if names is None:
        return None
    allowed = {f'{g.__module__}.{g.__qualname__}' for g in SAFE_GLOBALS}
    return [n for n in names if n not in allowed] or None


def _scan_pickle_globals(path: str) -> Optional[List[str]]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL of a plain (non-zip) pickle, read with :mod:`pickletools`
    (opcodes are listed, nothing is constructed); None when the file is no readable pickle."""
    import pickletools
    names, strings = [], []
    try:
        with open(path, 'rb') as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name == 'GLOBAL':
                    names.append(str(arg).replace(' ', '.'))
                elif opcode.name == 'STACK_GLOBAL' and len(strings) >= 2:
                    names.append(f'{strings[-2]}.{strings[-1]}')
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:
        return names or None
    return names


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def select_weights(checkpoint: Any, weights: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], str]:
    """The state dict to use from a checkpoint, and where it was found.

    Args:
        checkpoint: what :func:`read_checkpoint` returned.
        weights: ``'model'`` (the raw weights), ``'ema'`` (the exponential moving average) or None (the official
            loaders' choice: ``'model'``; a plain state dict is taken as is).

    Raises:
        ValueError: an unknown ``weights``, the requested set absent (the message lists the entries found), or no
            state dict in the file.
    """
    if weights not in (None, 'model', 'ema'):
        raise ValueError(f"weights must be 'model', 'ema' or None, got {weights!r}")
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'the checkpoint holds a {type(checkpoint).__name__}, not a dict of weights')
    if _is_state_dict(checkpoint):
        if weights == 'ema':
            raise ValueError('weights=ema: the file is a plain state dict, it holds no EMA weights')
        return dict(checkpoint), '(top level)'
    wanted = weights or DEFAULT_WEIGHTS
    for key in WEIGHT_KEYS[wanted]:
        if key in checkpoint and _is_state_dict(checkpoint[key]):
            return dict(checkpoint[key]), key
    entries = sorted(str(k) for k in checkpoint)
    raise ValueError(f'weights={wanted}: none of {list(WEIGHT_KEYS[wanted])} holds a state dict in this file; its '
                     f'entries are {entries[:20]}')


def read_weights(path: str, weights: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """:func:`read_checkpoint` then :func:`select_weights`: the chosen state dict of a file."""
    return select_weights(read_checkpoint(path), weights)[0]


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = 'checkpoint') -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with an error naming every key that does not fit.

    Raises:
        ValueError: missing keys, unexpected keys or shape mismatches, each listed.
    """
    from ._helpers import check_state_dict  # _helpers imports this module
    try:
        check_state_dict(state_dict, model)
    except ValueError as e:
        raise ValueError(f'{what}: {e}') from None
    model.load_state_dict(state_dict, strict=True)
