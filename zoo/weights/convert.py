"""Convert an official checkpoint to timm hub weights: ``model.safetensors`` + ``config.json``, then verify them.

``python -m zoo.weights convert --model dinat_tiny --official dinat_tiny_in1k_224.pth --out hub/dinat_tiny
[--weights model|ema] [--model-kwargs '{"drop_path_rate": 0.2}']``

1. The file is read by :func:`zoo.weights.safe_load.read_checkpoint` (safetensors, or ``torch.load(weights_only=
   True)`` with an allow-list of harmless types: a pickle carrying code is refused, never run).
2. One weight set is taken (:func:`zoo.weights.safe_load.select_weights`): a plain state dict as is; from a file
   holding several (``{'model': ..., 'model_ema': ..., 'optimizer': ..., 'args': ...}``) the ``model`` weights
   by default, which is what every family's official loader takes (NAT/DiNAT and ViT-RPB: ``model``; BiFormer:
   ``model``, its ``model_ema`` only on request; the DeiT/Swin/PVT-derived training scripts of the other families:
   ``model``), or the EMA with ``--weights ema`` (``model_ema`` / ``state_dict_ema`` / ``ema``). The choice is one
   generic key search (:data:`zoo.weights.safe_load.WEIGHT_KEYS`), so a family that lands later needs no entry.
3. The model is built with ``timm.create_model`` (``num_classes`` from the checkpoint's classifier when it differs
   from the default) and the weights go through the family's ``checkpoint_filter_fn`` (the module that registers
   the model), then a strict load: a wrong model or a mismatched file names the missing / unexpected / wrongly
   shaped keys.
4. Written with timm's ``save_for_hf(..., safe_serialization=True)`` (the writer of ``export``): the config
   records the model arguments, so ``timm.create_model('local-dir:<out>', pretrained=True)`` rebuilds it.
5. Verified: reloaded from ``<out>`` that way, its logits on one input must equal the converted model's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Optional

import torch

from .safe_load import read_checkpoint, select_weights

__all__ = ['convert_checkpoint', 'filter_fn_for', 'register']


def filter_fn_for(name: str):
    """The ``checkpoint_filter_fn`` of the zoo module that registers ``name`` (the one its pretrained loader uses).

    Raises:
        ValueError: ``name`` is not a registered zoo model, or its module has no ``checkpoint_filter_fn``.
    """
    import timm

    import zoo  # noqa: F401  (registers the models)
    from zoo.models import check_model_name
    check_model_name(name)
    arch = name.split('.')[0]
    module = timm.models.model_entrypoint(arch).__module__
    if not module.startswith('zoo.'):
        raise ValueError(f'model {name!r} is a timm model, not a zoo one: load its weights with timm itself')
    fn = getattr(sys.modules[module], 'checkpoint_filter_fn', None)
    if fn is None:
        raise ValueError(f'{module} defines no checkpoint_filter_fn: cannot convert official weights for {name!r}')
    return fn


def check_out_path(path: str, folder: bool) -> None:
    """Refuse an output path of the wrong kind before any work: a folder to write (``folder``) that is an existing
    file, or a file to write that is an existing folder.

    Raises:
        ValueError: naming the path and what it must be.
    """
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f'out: {path!r} is a file; give the folder to write model.safetensors and config.json to')
    if not folder and os.path.isdir(path):
        raise ValueError(f'out: {path!r} is a folder; give the file to write')


def _num_classes(state_dict: Dict[str, torch.Tensor]) -> Optional[int]:
    head = state_dict.get('head.fc.weight')
    return int(head.shape[0]) if head is not None and head.dim() == 2 else None


def convert_checkpoint(
        model_name: str,
        official: str,
        out_dir: str,
        weights: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        verify: bool = True,
) -> Dict[str, Any]:
    """Convert ``official`` for ``model_name`` and write ``model.safetensors`` + ``config.json`` to ``out_dir``.

    Args:
        model_name: a registered zoo model (``dinat_tiny``, ``biformer_small``, ...).
        official: the official checkpoint file (``.pth`` / ``.pt`` / ``.safetensors``).
        out_dir: output folder (created; files of the same names are replaced).
        weights: ``'model'``, ``'ema'`` or None (the official loader's choice, ``model``; see the module doc).
        model_kwargs: extra ``create_model`` arguments (a custom configuration); recorded in ``config.json``.
        verify: reload ``local-dir:<out_dir>`` with timm and compare one forward with the converted model.

    Returns:
        ``dict(out_dir, model_name, num_classes, params, weights_entry, max_abs_diff)``.

    Raises:
        ValueError: unreadable or unsafe file, absent weight set, weights that do not fit the model (naming the
            keys), or a reload that does not reproduce the converted model.
    """
    import timm
    from timm.models import save_for_hf

    check_out_path(out_dir, folder=True)
    filter_fn = filter_fn_for(model_name)
    checkpoint = read_checkpoint(official)
    state_dict, entry = select_weights(checkpoint, weights)
    kwargs = dict(model_kwargs or {})
    model = timm.create_model(model_name, **kwargs)
    converted = filter_fn(state_dict, model)
    n = _num_classes(converted)
    if n is not None and n != model.num_classes and 'num_classes' not in kwargs:
        kwargs['num_classes'] = n
        model = timm.create_model(model_name, **kwargs)
        converted = filter_fn(state_dict, model)
    try:
        from zoo.models._helpers import check_state_dict
        check_state_dict(converted, model)
    except ValueError as e:
        raise ValueError(f'{official!r} does not fit {model_name} (wrong model or file?): {e}') from None
    model.load_state_dict(converted, strict=True)
    model.eval()

    data_config = _data_config(model, kwargs)
    tag = getattr(model, 'pretrained_cfg', {}).get('tag') or 'official'
    model_config = dict(pretrained_cfg=dict(
        tag=tag, description=f'{model_name}: official weights ({os.path.basename(official)}, entry {entry}) '
                             f'converted by python -m zoo.weights convert'))
    save_for_hf(model, out_dir, model_config=model_config, safe_serialization=True, data_config=data_config)

    max_abs = None
    if verify:
        max_abs = verify_export(model, out_dir, input_size=data_config['input_size'])
    return dict(out_dir=out_dir, model_name=model_name, num_classes=model.num_classes,
                params=sum(p.numel() for p in model.parameters()), weights_entry=entry, max_abs_diff=max_abs)


def _data_config(model: torch.nn.Module, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """timm's data config of ``model``; a fixed-size model built with ``img_size=`` takes that size."""
    import timm
    from timm.layers import to_2tuple
    data_config = timm.data.resolve_data_config({}, model=model)
    if kwargs.get('img_size') is not None and (getattr(model, 'pretrained_cfg', None) or {}).get('fixed_input_size'):
        data_config['input_size'] = (data_config['input_size'][0], *to_2tuple(kwargs['img_size']))
    return data_config


def verify_export(model: torch.nn.Module, out_dir: str, input_size=None, atol: float = 0.0) -> float:
    """Reload ``local-dir:<out_dir>`` with timm and compare one forward with ``model``; the largest difference.

    Raises:
        ValueError: the reloaded model is another architecture or its logits differ by more than ``atol``.
    """
    import timm
    reloaded = timm.create_model(f'local-dir:{os.path.abspath(out_dir)}', pretrained=True).eval()
    if type(reloaded) is not type(model) or reloaded.num_classes != model.num_classes:
        raise ValueError(f'verify: {out_dir} reloads as {type(reloaded).__name__} with {reloaded.num_classes} '
                         f'classes, not {type(model).__name__} with {model.num_classes}')
    size = input_size or timm.data.resolve_data_config({}, model=model)['input_size']
    x = torch.randn((1, *size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((reloaded(x) - model(x)).abs().max())
    if not diff <= atol:
        raise ValueError(f'verify: the model reloaded from {out_dir} differs from the converted one by {diff:.3g}')
    return diff


def _run(args: argparse.Namespace) -> int:
    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as e:
        raise ValueError(f'--model-kwargs must be a JSON object: {e}') from None
    if not isinstance(kwargs, dict):
        raise ValueError(f'--model-kwargs must be a JSON object, got {args.model_kwargs!r}')
    info = convert_checkpoint(args.model, args.official, args.out, weights=args.weights, model_kwargs=kwargs)
    print(f'Converted {args.official} (entry {info["weights_entry"]}) for {info["model_name"]} '
          f'({info["params"]:,} params, {info["num_classes"]} classes) to {args.out}: model.safetensors, config.json; '
          f'reloaded and verified (max |diff| {info["max_abs_diff"]:.3g})')
    print(f"Load with: import zoo, timm; timm.create_model('local-dir:{args.out}', pretrained=True)")
    return 0


def register(subparsers) -> None:
    """Add the ``convert`` subcommand to ``python -m zoo.weights``."""
    parser = subparsers.add_parser(
        'convert', help='official checkpoint -> model.safetensors + config.json (verified by reloading)',
        description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True, help='zoo model name, e.g. dinat_tiny')
    parser.add_argument('--official', required=True, help='official checkpoint (.pth / .pt / .safetensors)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--weights', choices=('model', 'ema'), default=None,
                        help="weight set of a file that holds several (default: 'model', the official loaders' "
                             "choice)")
    parser.add_argument('--model-kwargs', default=None,
                        help='JSON object of extra create_model arguments (a custom configuration)')
    parser.set_defaults(func=_run)
