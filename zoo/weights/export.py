"""Export a Lightning training checkpoint as timm hub weights: ``model.safetensors`` + ``config.json`` + README.md.

``python -m zoo.weights export --ckpt logs/demo/version_0/checkpoints/last.ckpt --out exports/demo [--ema]``

The checkpoint is read by :func:`zoo.weights.safe_load.read_checkpoint` (``torch.load(weights_only=True)`` with
an allow-list of harmless types: no code runs from it) and without Lightning. The
model is rebuilt with ``timm.create_model`` from the hyper-parameters ``ClassifierModule`` saved (name, class
count, fixed input size, ``model_kwargs``), the ``model.`` prefix is stripped, the weights are loaded strictly and
written with timm's ``save_for_hf(..., safe_serialization=True)``: ``config.json`` carries the architecture, the
class count, the label names and the data config (input size, mean, std, interpolation, crop) of the training
data. Then, after ``import zoo``::

    timm.create_model('local-dir:<out>', pretrained=True)
    timm.create_model(<name>, pretrained=True, num_classes=<n>,
                      pretrained_cfg_overlay=dict(file='<out>/model.safetensors', num_classes=<n>))

give the trained network, bit for bit.

Weights: with Lightning's ``EMAWeightAveraging`` callback a checkpoint's ``state_dict`` holds the EMA weights and
``current_model_state`` the raw ones. The default export takes the raw weights; ``--ema`` the EMA ones (an error if
the run had no EMA). Without the callback ``state_dict`` holds the raw weights.
"""
import argparse
import json
import os
from typing import Any, Dict, Optional, Tuple

import torch

from zoo import DISTRIBUTION
from zoo.models import check_model_name, create_model
from zoo.models._flops import count_gmacs

from .safe_load import read_checkpoint

__all__ = ['export_checkpoint', 'load_training_checkpoint', 'model_state_dict', 'build_model', 'gmacs_or_reason',
           'register']


def load_training_checkpoint(path: str) -> Dict[str, Any]:
    """Read a Lightning ``.ckpt`` safely (``weights_only=True``) on CPU.

    Raises:
        ValueError: the file is missing or is not a ClassifierModule checkpoint.
    """
    if not os.path.isfile(path):
        raise ValueError(f'ckpt: no such file {path!r}.')
    try:
        ckpt = read_checkpoint(path)
    except ValueError as e:
        raise type(e)(f'ckpt: {e}') from None
    if not isinstance(ckpt, dict) or 'state_dict' not in ckpt or 'model_name' not in ckpt.get('hyper_parameters', {}):
        raise ValueError(f'ckpt: {path!r} is not a training checkpoint of zoo.train.ClassifierModule '
                         f'(expected keys state_dict and hyper_parameters.model_name).')
    return ckpt


def model_state_dict(ckpt: Dict[str, Any], ema: bool = False) -> Dict[str, torch.Tensor]:
    """The timm model's weights (``model.`` prefix removed) from a training checkpoint; see the module docstring.

    Raises:
        ValueError: ``ema=True`` but the checkpoint holds no EMA weights.
    """
    has_ema = 'current_model_state' in ckpt
    if ema and not has_ema:
        raise ValueError('--ema: this checkpoint holds no EMA weights (train with the EMAWeightAveraging callback, '
                         'e.g. --trainer.callbacks+=EMAWeightAveraging).')
    source = ckpt['state_dict'] if (ema or not has_ema) else ckpt['current_model_state']
    out = {}
    for key, value in source.items():
        if key.startswith('model.'):
            key = key[len('model.'):]
            if key.startswith('_orig_mod.'):
                key = key[len('_orig_mod.'):]
            out[key] = value
    if not out:
        raise ValueError('ckpt: no "model.*" weights found in the checkpoint.')
    return out


def build_model(hparams: Dict[str, Any]) -> torch.nn.Module:
    """The bare timm model (no pretrained weights, no drop rates) a ClassifierModule with ``hparams`` trained.

    Raises:
        ValueError: the checkpoint's model name is not registered after ``import zoo``.
    """
    name = hparams['model_name']
    try:
        check_model_name(name)
    except ValueError as e:
        raise ValueError(f'ckpt: the checkpoint was trained with a model this install does not register (is this '
                         f'the zoo version that trained it?): {e}') from None
    return create_model(name, input_size=hparams.get('img_size'), num_classes=hparams['num_classes'],
                        **dict(hparams.get('model_kwargs') or {}))


def gmacs_or_reason(model: torch.nn.Module, input_size: Tuple[int, int, int]) -> Tuple[Optional[float], str]:
    """GMACs of one ``[1, *input_size]`` forward with :func:`zoo.models._flops.count_gmacs` (the counter of the
    README's model table), or None and the reason counting failed (the count is informative only)."""
    try:
        return count_gmacs(model, tuple(input_size)), ''
    except ImportError:
        return None, 'fvcore not installed: pip install fvcore'
    except Exception as e:  # a model fvcore cannot trace still exports
        return None, f'counting failed: {type(e).__name__}'


def _model_card(
        out_dir: str, model: torch.nn.Module, hparams: Dict[str, Any], ckpt: Dict[str, Any], ckpt_path: str,
        ema: bool, data_config: Dict[str, Any], gmacs: Optional[float], gmacs_note: str,
) -> str:
    name = hparams['model_name']
    params = sum(p.numel() for p in model.parameters())
    metrics = ckpt.get('zoo_metrics', {})
    best = None
    for key, state in ckpt.get('callbacks', {}).items():
        if key.startswith('ModelCheckpoint') and state.get('best_model_score') is not None:
            best = (state.get('monitor'), float(state['best_model_score']))
    data_hp = ckpt.get('datamodule_hyper_parameters', {})
    data_name = data_hp.get('_class_path') or ckpt.get('hparams_name') or 'n/a'
    data_bits = ', '.join(f'{k}={v}' for k, v in data_hp.items() if not k.startswith('_') and k in (
        'root', 'img_size', 'batch_size', 'val_fraction', 'split_seed', 'train_split', 'val_split'))
    has_ema = 'current_model_state' in ckpt
    weights = 'EMA weights' if ema else ('raw weights (the run also kept an EMA)' if has_ema else 'raw weights')
    lines = [
        f'# {name} — {os.path.basename(os.path.abspath(out_dir))}',
        '',
        f'Exported by `python -m zoo.weights export` from `{ckpt_path}` (epoch {ckpt.get("epoch")}, '
        f'step {ckpt.get("global_step")}); {weights}.',
        '',
        '| | |',
        '|---|---|',
        f'| architecture | `{name}` |',
        f'| parameters | {params:,} ({params / 1e6:.2f} M) |',
        f'| GMACs | {f"{gmacs:.4f}" if gmacs is not None else f"n/a ({gmacs_note})"} at '
        f'{tuple(data_config["input_size"])}, batch 1 (fvcore, neighborhood and routing attention counted: the '
        f'convention of the zoo README\'s model table) |',
        f'| classes | {hparams["num_classes"]} |',
        f'| input | {tuple(data_config["input_size"])}, mean {tuple(data_config.get("mean", ()))}, '
        f'std {tuple(data_config.get("std", ()))} |',
        f'| data | {data_name}{f" ({data_bits})" if data_bits else ""} |',
    ]
    for key in ('val_acc', 'val_acc5', 'val_loss', 'train_loss_epoch'):
        if key in metrics:
            lines.append(f'| {key} (at this checkpoint) | {metrics[key]:.4f} |')
    if best is not None:
        lines.append(f'| best {best[0]} of the run | {best[1]:.4f} |')
    if has_ema:
        lines.append('| note | validation metrics were measured with the EMA weights |')
    lines += [
        '',
        '## Use',
        '',
        f'Needs the `{DISTRIBUTION}` package (`pip install {DISTRIBUTION}`), which registers the architecture with '
        'timm:',
        '',
        '```python',
        'import timm, zoo  # zoo registers the architecture',
        f"model = timm.create_model('local-dir:{out_dir}', pretrained=True).eval()",
        'cfg = timm.data.resolve_data_config({}, model=model)',
        'transform = timm.data.create_transform(**cfg)',
        '```',
        '',
    ]
    return '\n'.join(lines)


def export_checkpoint(
        ckpt_path: str,
        out_dir: str,
        ema: bool = False,
        gmacs: bool = True,
        tag: Optional[str] = None,
) -> Dict[str, Any]:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for a training checkpoint.

    Args:
        ckpt_path: Lightning ``.ckpt`` written by ``train.py fit``.
        out_dir: output folder (created; existing files of the same names are replaced).
        ema: export the EMA weights instead of the raw ones.
        gmacs: count GMACs for the model card (one forward at the training input size).
        tag: the weights' tag in ``pretrained_cfg`` (``<arch>.<tag>``); None uses the output folder's name.

    Returns:
        ``dict(out_dir=..., model_name=..., num_classes=..., params=..., gmacs=...)``.

    Raises:
        ValueError: unreadable checkpoint, no EMA weights with ``ema=True``, or weights that do not fit the model.
    """
    from timm.models import save_for_hf

    from .convert import check_out_path
    check_out_path(out_dir, folder=True)
    ckpt = load_training_checkpoint(ckpt_path)
    hparams = dict(ckpt['hyper_parameters'])
    state_dict = model_state_dict(ckpt, ema=ema)
    model = build_model(hparams)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ValueError(f'ckpt: the weights do not fit {hparams["model_name"]}: {e}') from e
    model.eval()

    num_classes = int(hparams['num_classes'])
    label_names = list(hparams.get('label_names') or [])
    data_config = dict(hparams.get('data_config') or {})
    data_config.setdefault('input_size', tuple(model.pretrained_cfg['input_size']))
    data_config['input_size'] = tuple(data_config['input_size'])
    for key in ('mean', 'std'):
        if key in data_config:
            data_config[key] = tuple(data_config[key])
    tag = tag or os.path.basename(os.path.abspath(out_dir)).replace('.', '_')
    model_config = dict(pretrained_cfg=dict(tag=tag, description=f'{hparams["model_name"]} trained with train.py'))
    if label_names:
        model_config['label_names'] = label_names
    save_for_hf(model, out_dir, model_config=model_config, safe_serialization=True, data_config=data_config)

    macs, macs_note = gmacs_or_reason(model, data_config['input_size']) if gmacs else (None, 'not counted')
    card = _model_card(out_dir, model, hparams, ckpt, ckpt_path, ema, data_config, macs, macs_note)
    with open(os.path.join(out_dir, 'README.md'), 'w') as f:
        f.write(card)
    return dict(out_dir=out_dir, model_name=hparams['model_name'], num_classes=num_classes,
                params=sum(p.numel() for p in model.parameters()), gmacs=macs)


def _run(args: argparse.Namespace) -> int:
    info = export_checkpoint(args.ckpt, args.out, ema=args.ema, gmacs=not args.no_gmacs, tag=args.tag)
    with open(os.path.join(args.out, 'config.json')) as f:
        arch = json.load(f)['architecture']
    print(f'Exported {arch} ({info["params"]:,} params, {info["num_classes"]} classes'
          f'{", EMA weights" if args.ema else ""}) to {args.out}: model.safetensors, config.json, README.md')
    print(f"Load with: import zoo, timm; timm.create_model('local-dir:{args.out}', pretrained=True)")
    return 0


def register(subparsers) -> None:
    """Add the ``export`` subcommand to ``python -m zoo.weights``."""
    parser = subparsers.add_parser(
        'export', help='training checkpoint (.ckpt) -> model.safetensors + config.json + README.md',
        description=__doc__.split('\n\n')[0])
    parser.add_argument('--ckpt', required=True, help='Lightning checkpoint written by train.py fit')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--ema', action='store_true', help='export the EMA weights (EMAWeightAveraging runs)')
    parser.add_argument('--tag', default=None, help="weights tag in the config (default: the output folder's name)")
    parser.add_argument('--no-gmacs', action='store_true', help='skip the GMACs count in the model card')
    parser.set_defaults(func=_run)
