"""ONNX export of any zoo model with the standard ``torch.onnx.export(..., dynamo=True)``, checked by onnxruntime.

``python -m zoo.weights onnx --model nat_tiny [--file weights.safetensors | --file hub/dir] --out nat_tiny.onnx
[--input-size 3 224 224] [--static-hw] [--opset 18] [--atol 1e-4]``

These things stop a plain ``torch.onnx.export(model, x, dynamo=True)`` of our models, and :func:`onnx_export_mode`
handles them while the export traces (and restores everything afterwards):

* the ops of ``zoo_kernels`` (neighborhood and routing attention) dispatch to the ``torch.library`` custom ops of
  their Triton backend or to a fast torch path that the decomposition step cannot lower (its reshapes of
  transposed attention outputs become invalid views once SDPA is decomposed). During the export both ops take
  their ``reference`` backend (``ZOO_NA_BACKEND`` / ``ZOO_BRA_BACKEND``): the exact specification, plain
  gathers, matmuls and softmax that every ONNX runtime has;
* modules with timm's ``fused_attn`` run their explicit-matmul path (the same function as SDPA; the fused kernel's
  strides break the same decomposition);
* functions whose graph would bake a size into an ONNX attribute are replaced by an equal computation
  (:data:`_EXPORT_SUBSTITUTES`): InLine's per-sample depthwise conv (``groups = batch x channels``, and ONNX
  ``Conv`` needs a constant group count) becomes nine shifted products, so InLine keeps a dynamic batch; timm's
  TensorFlow-'SAME' padding (MaxViT's stem and stride-2 convs) computes its padding through a float ceiling inside a
  max, which the exporter's shape solver cannot simplify once sizes are symbolic (MaxViT's trace did not finish):
  it takes an equal integer form (:func:`_same_padding_integer`).

The graph has a dynamic batch axis and, where the model allows it, dynamic height and width: the export is first
tried with all three dynamic and checked in onnxruntime at a second image size. Layers whose eager forward makes
size-dependent choices in Python (Swin windows that shrink to the map or lose their shift, MaxViT partitions, padding
and its masks) take a path under ``torch.export`` where those choices are tensor arithmetic, so every zoo variant
exports with a dynamic image size. A model whose graph still specialises to the traced size (a model outside the
zoo, a stage map of 1 x 1 at the traced size, an Agent/InLine-Swin built with ``img_size`` above its family window)
or that has a fixed input size (ViT-RPB) is exported again with static height and width. Every export is verified
against PyTorch in float32 (max abs difference <= ``atol``, default 1e-4) at batch 1 and 3.

Users calling ``torch.onnx.export`` themselves get the same graph inside ``with onnx_export_mode(model):``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
from timm.layers import padding as timm_padding

from zoo.layers._checks import check_number

from .convert import check_out_path

__all__ = ['onnx_export_mode', 'export_onnx', 'check_onnx', 'load_model', 'register']

_BACKEND_ENV = ('ZOO_NA_BACKEND', 'ZOO_BRA_BACKEND')


def _dwconv3x3_per_sample_shifts(x: torch.Tensor, weight: torch.Tensor,
                                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``zoo.layers.inline_attention.dwconv3x3_per_sample`` as nine shifted products (export only).

    The layer runs one depthwise conv over the ``B * C`` channels of a single image, i.e. ``groups = B * C``: ONNX
    ``Conv`` needs a constant ``group``, so that graph keeps the traced batch. The same cross-correlation as a sum of
    the nine shifted, zero-padded maps times the per-sample taps has no batch-dependent attribute: batch, height and
    width stay symbolic (equal to the conv up to float rounding: the nine products are summed in another order).
    """
    B, H, W, C = x.shape
    if weight.shape != (B, C, 3, 3):
        raise ValueError(f'weight must be [B, C, 3, 3] = {[B, C, 3, 3]}, got {list(weight.shape)}')
    taps = weight.to(x.dtype).permute(0, 2, 3, 1)  # [B, 3, 3, C]
    padded = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1))  # [B, H + 2, W + 2, C]
    out = padded[:, :H, :W] * taps[:, None, None, 0, 0]
    for i in range(3):
        for j in range(3):
            if i or j:
                out = out + padded[:, i:i + H, j:j + W] * taps[:, None, None, i, j]
    if bias is not None:  # [B, C] (the InLine layer passes mean(V) as the conv's bias)
        out = out + bias.to(x.dtype)[:, None, None, :]
    return out


def _same_padding_integer(x, kernel_size: int, stride: int, dilation: int):
    """timm's ``get_same_padding`` (TensorFlow 'SAME': the total padding of one axis) in integer arithmetic (export
    only).

    timm computes ``max((ceil(x / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - x, 0)`` through a float
    division. On a symbolic size that is a float ceiling inside a max, which the exporter's shape solver cannot
    simplify, and every later stage nests it again (MaxViT's stem and stride-2 MBConvs did not finish tracing).
    Here the ceiling is ``(x + stride - 1) // stride`` (not ``-(-x // stride)``: ONNX ``Div`` truncates negative
    quotients), and the max is dropped where the padding cannot be negative (``(kernel_size - 1) * dilation + 1 >=
    stride``, every conv of our models). Equal to timm's for every ``x >= 1``.
    """
    if isinstance(x, torch.Tensor):
        return _TIMM_SAME_PADDING(x, kernel_size, stride, dilation)
    pad = ((x + stride - 1) // stride - 1) * stride + (kernel_size - 1) * dilation + 1 - x
    return pad if (kernel_size - 1) * dilation + 1 >= stride else max(pad, 0)


_TIMM_SAME_PADDING = timm_padding.get_same_padding

# (module, function, export substitute): functions whose graph would bake a size into an ONNX attribute, or whose
# size arithmetic the exporter cannot solve, replaced while exporting by an equal computation that keeps the axes
# symbolic
_EXPORT_SUBSTITUTES = (
    ('zoo.layers.inline_attention', 'dwconv3x3_per_sample', _dwconv3x3_per_sample_shifts),
    ('timm.layers.padding', 'get_same_padding', _same_padding_integer),
)


@contextlib.contextmanager
def onnx_export_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Route ``model`` to its exportable paths while the block runs (see the module docstring); restores after."""
    import importlib
    saved_env = {k: os.environ.get(k) for k in _BACKEND_ENV}
    saved_fused = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, 'fused_attn', None), bool)]
    saved_fns = [(importlib.import_module(mod), fn) for mod, fn, _ in _EXPORT_SUBSTITUTES]
    saved_fns = [(mod, fn, getattr(mod, fn)) for mod, fn in saved_fns]
    try:
        for k in _BACKEND_ENV:
            os.environ[k] = 'reference'
        for m, _ in saved_fused:
            m.fused_attn = False
        for (mod, fn, _), (_, _, substitute) in zip(saved_fns, _EXPORT_SUBSTITUTES):
            setattr(mod, fn, substitute)
        yield model
    finally:
        for mod, fn, original in saved_fns:
            setattr(mod, fn, original)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for m, v in saved_fused:
            m.fused_attn = v


def _probe_size(size: Tuple[int, int]) -> Tuple[int, int]:
    """A second image size, neither a multiple of the first nor square: exposes sizes baked into the graph."""
    h, w = size
    return h + max(8, h // 4), w + max(4, w // 8)


def _one_pixel_maps(model: torch.nn.Module, x: torch.Tensor) -> list:
    """Shapes of the model's intermediate maps (``forward_intermediates``) with a height or width of 1 at ``x``'s
    size: torch.export specialises such dims, and the graph may then not take other sizes, the batch included."""
    if not hasattr(model, 'forward_intermediates'):
        return []
    try:
        with torch.no_grad():
            maps = model.forward_intermediates(x, intermediates_only=True)
    except Exception:  # a model outside the zoo with another interface: no hint
        return []
    return [tuple(m.shape) for m in maps if m.dim() == 4 and 1 in m.shape[2:]]


def check_onnx(
        model: torch.nn.Module, path: str, inputs: Sequence[torch.Tensor], atol: float = 1e-4,
) -> float:
    """Run ``path`` in onnxruntime (CPU) on each input and compare with ``model``; the largest abs difference.

    Raises:
        ValueError: onnxruntime fails on an input, or a difference exceeds ``atol`` (naming the input shape).
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except Exception as e:  # e.g. an opset newer than this onnxruntime implements
        raise ValueError(f'onnxruntime cannot load {path!r}: {_first_line(e)}') from None
    name = session.get_inputs()[0].name
    worst = 0.0
    model.eval()
    for x in inputs:
        with torch.no_grad():
            ref = model(x).float().numpy()
        try:
            out = session.run(None, {name: x.numpy()})[0]
        except Exception as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(f'onnxruntime failed at input {tuple(x.shape)}: {first}') from None
        if out.shape != ref.shape:
            raise ValueError(f'onnxruntime gives {out.shape} at input {tuple(x.shape)}, PyTorch {ref.shape}')
        diff = float(abs(out - ref).max())
        if not diff <= atol:
            raise ValueError(f'onnxruntime differs from PyTorch by {diff:.3g} > {atol} at input {tuple(x.shape)}')
        worst = max(worst, diff)
    return worst


def _export(model, x, path, dynamic_hw: bool, opset: Optional[int], optimize: bool,
            dynamic_batch: bool = True) -> None:
    dims: Dict[int, Any] = {0: torch.export.Dim('batch', min=1, max=4096)} if dynamic_batch else {}
    if dynamic_hw:
        dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
    kwargs = dict(opset_version=opset) if opset else {}
    with onnx_export_mode(model):
        torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=(dims,), input_names=['image'],
                          output_names=['logits'], optimize=optimize, verbose=False, **kwargs)


def export_onnx(
        model: torch.nn.Module,
        path: str,
        input_size: Optional[Tuple[int, int, int]] = None,
        dynamic_hw: Optional[bool] = None,
        dynamic_batch: Optional[bool] = None,
        atol: float = 1e-4,
        opset: Optional[int] = None,
        optimize: bool = True,
        seed: int = 0,
) -> Dict[str, Any]:
    """Export ``model`` to ``path`` and verify it in onnxruntime.

    Args:
        model: a (zoo or timm) classification model; put in eval mode.
        path: the ``.onnx`` file to write.
        input_size: ``(C, H, W)`` traced; default the model's pretrained cfg input size. For dynamic height and
            width, trace at a size where no stage map is 1 x 1: torch.export specialises dims of size 1.
        dynamic_hw: True: dynamic height and width required (an error if the graph does not generalise); False:
            static; None: dynamic where the model allows it (see the module docstring).
        dynamic_batch: True: required; None: where the graph allows it (a model outside the zoo that folds the
            batch into an attribute, e.g. conv groups, exports with the traced batch, 2); False is not offered.
        atol: largest abs difference to PyTorch allowed (float32).
        opset: ONNX opset (default: the exporter's).
        optimize: run the exporter's graph optimisation (onnxscript).
        seed: the verification inputs' seed.

    Returns:
        ``dict(path, dynamic_batch, dynamic_hw, max_abs_diff, checked_shapes)`` (+ ``static_reason`` when the
        batch had to be static).

    Raises:
        ValueError: the export does not match PyTorch (the message names the input), ``dynamic_hw=True`` for
            a model whose graph does not generalise to other sizes (or whose class is known to keep them static),
            an ``input_size`` the model does not run on, ``atol`` not a finite number >= 0, or an ``opset`` the
            exporter did not write (it writes 18 or above, converting down only where it can).
        TypeError: ``input_size``, ``atol`` or ``opset`` of another type.
    """
    import timm
    model.eval()
    if input_size is None:
        input_size = tuple(timm.data.resolve_data_config({}, model=model)['input_size'])
    _check_export_args(model, input_size, atol, opset)
    check_out_path(path, folder=False)
    info = _export_verified(model, path, tuple(input_size), dynamic_hw, dynamic_batch, atol, opset, optimize, seed)
    _check_written_opset(path, opset)
    return info


def _check_export_args(model: torch.nn.Module, input_size, atol: float, opset: Optional[int]) -> None:
    """Refuse arguments that would fail deep in the exporter or pass a check they should not (:func:`export_onnx`)."""
    if (not isinstance(input_size, (tuple, list)) or len(input_size) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in input_size)):
        raise TypeError(f'input_size must be (C, H, W), three ints, got input_size={input_size!r}')
    if min(input_size) < 1:
        raise ValueError(f'input_size must be (C, H, W) with every size >= 1, got input_size={tuple(input_size)}')
    check_number('atol', atol, 0)
    import onnx
    check_number('opset', opset, 1, onnx.defs.onnx_opset_version(), integer=True, optional=True)  # the newest known
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    except Exception as e:  # a wrong channel count or a size the model does not take, named before tracing
        raise ValueError(f'input_size={tuple(input_size)}: {type(model).__name__} does not run on a '
                         f'{[1, *input_size]} image: {_first_line(e)}') from None


def _check_written_opset(path: str, opset: Optional[int]) -> None:
    """The file's default-domain opset is the one asked for: torch's dynamo exporter writes opset 18 or above and
    keeps 18 (with a warning) where it cannot convert the graph down; that file is removed rather than returned."""
    if opset is None:
        return
    import onnx
    written = [i.version for i in onnx.load(path, load_external_data=False).opset_import if i.domain in ('', 'ai.onnx')]
    if written != [opset]:
        os.remove(path)
        raise ValueError(f'opset={opset}: torch.onnx wrote opset {written[0] if written else None} instead (its '
                         f'exporter writes 18 or above and converts down only where it can); leave opset unset or '
                         f'ask for 18 or above')


def _export_verified(model: torch.nn.Module, path: str, input_size: Tuple[int, int, int], dynamic_hw: Optional[bool],
                     dynamic_batch: Optional[bool], atol: float, opset: Optional[int], optimize: bool,
                     seed: int) -> Dict[str, Any]:
    """The export and its onnxruntime check (:func:`export_onnx`, after its argument checks)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    c, h, w = input_size
    fixed = bool(cfg.get('fixed_input_size'))
    if dynamic_hw and fixed:
        raise ValueError(f'dynamic_hw=True: {type(model).__name__} has a fixed input size {(h, w)}')
    gen = torch.Generator().manual_seed(seed)
    batch_inputs = [torch.randn(1, c, h, w, generator=gen), torch.randn(3, c, h, w, generator=gen)]
    x = torch.randn(2, c, h, w, generator=gen)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if dynamic_hw is not False and not fixed:
        ph, pw = _probe_size((h, w))
        probe = [torch.randn(2, c, ph, pw, generator=gen)]
        try:
            try:
                _export(model, x, path, True, opset, optimize)
            except Exception as e:  # the exporter cannot keep the sizes symbolic: retried static below
                raise ValueError(f'export failed: {type(e).__name__}: {_first_line(e)}') from None
            diff = check_onnx(model, path, batch_inputs + probe, atol)
            return dict(path=path, dynamic_batch=True, dynamic_hw=True, max_abs_diff=diff,
                        checked_shapes=[tuple(t.shape) for t in batch_inputs + probe])
        except ValueError as e:
            if dynamic_hw:
                raise ValueError(f'dynamic_hw=True: the graph does not generalise to other image sizes: {e}') from None
    try:
        _export(model, x, path, False, opset, optimize)
    except Exception as e:  # a graph folding the batch into an attribute (conv groups = batch x channels)
        if dynamic_batch is True:
            raise
        _export(model, x, path, False, opset, optimize, dynamic_batch=False)
        diff = check_onnx(model, path, [x], atol)
        return dict(path=path, dynamic_batch=False, dynamic_hw=False, max_abs_diff=diff,
                    checked_shapes=[tuple(x.shape)], static_reason=f'{type(e).__name__}: {_first_line(e)}')
    try:
        diff = check_onnx(model, path, batch_inputs, atol)
    except ValueError as e:
        small = _one_pixel_maps(model, x[:1])
        if not small:
            raise
        raise ValueError(f'{e}; at the traced input size {(c, h, w)} the feature maps {small} are 1 pixel wide or '
                         f'high, which torch.export specialises: trace at a larger input_size (--input-size)') from None
    return dict(path=path, dynamic_batch=True, dynamic_hw=False, max_abs_diff=diff,
                checked_shapes=[tuple(t.shape) for t in batch_inputs])


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:300] if lines else ''



def load_model(name: str, file: Optional[str] = None, weights: Optional[str] = None) -> torch.nn.Module:
    """``name`` with weights from ``file``: a hub folder (``convert`` / ``export`` output, read by timm), a file of
    our layout or the official one (through the family's ``checkpoint_filter_fn``), or none (random init).

    Raises:
        ValueError: unknown model, unreadable / unsafe file, or weights that do not fit (naming the keys).
    """
    import timm

    from .convert import _num_classes, filter_fn_for
    from .safe_load import load_into, read_checkpoint, select_weights
    filter_fn = filter_fn_for(name)
    if file is None:
        return timm.create_model(name).eval()
    if os.path.isdir(file):
        _check_folder_architecture(file, name)
        return timm.create_model(f'local-dir:{os.path.abspath(file)}', pretrained=True).eval()
    state_dict, _ = select_weights(read_checkpoint(file), weights)
    model = timm.create_model(name)
    converted = filter_fn(state_dict, model)
    n = _num_classes(converted)
    if n is not None and n != model.num_classes:
        model = timm.create_model(name, num_classes=n)
        converted = filter_fn(state_dict, model)
    load_into(model, converted, what=file)
    return model.eval()


def _check_folder_architecture(folder: str, name: str) -> None:
    """A hub folder (``config.json`` + weights) holds ``name``'s weights: timm builds the folder's architecture,
    which would otherwise be exported under another model's name."""
    from zoo.models.factory import read_export_config
    saved = read_export_config(folder)
    if saved is None:
        raise ValueError(f'file: folder {folder!r} has no config.json (write one with python -m zoo.weights export '
                         f'or convert), or give the weights file itself')
    arch = saved.get('architecture')
    if arch != name:
        raise ValueError(f'file: folder {folder!r} holds {arch!r} weights (its config.json architecture), not '
                         f'{name!r}: give --model {arch}')


def _run(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.file, args.weights)
    info = export_onnx(model, args.out, input_size=tuple(args.input_size) if args.input_size else None,
                       dynamic_hw=False if args.static_hw else None, atol=args.atol, opset=args.opset)
    axes = 'batch, height and width' if info['dynamic_hw'] else 'batch (height and width fixed)'
    if not info['dynamic_batch']:
        axes = f'nothing (batch 2, height and width fixed: {info["static_reason"]})'
    print(f'Exported {args.model} to {args.out}: input "image" [N, 3, H, W], output "logits"; dynamic {axes}; '
          f'onnxruntime vs PyTorch max |diff| {info["max_abs_diff"]:.3g} at {info["checked_shapes"]}')
    return 0


def register(subparsers) -> None:
    """Add the ``onnx`` subcommand to ``python -m zoo.weights``."""
    parser = subparsers.add_parser(
        'onnx', help='model (+ weights) -> model.onnx via torch.onnx.export, verified with onnxruntime',
        description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True, help='zoo model name, e.g. nat_tiny')
    parser.add_argument('--file', default=None,
                        help='weights: a hub folder, or a .safetensors/.pth of our or the official layout '
                             '(default: random init)')
    parser.add_argument('--weights', choices=('model', 'ema'), default=None,
                        help='weight set of a file that holds several (default: model)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                        help="traced input size (default: the model's pretrained cfg; larger where a stage map "
                             'would be 1 x 1)')
    parser.add_argument('--static-hw', action='store_true', help='fixed height and width (dynamic batch only)')
    parser.add_argument('--opset', type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument('--atol', type=float, default=1e-4, help='largest abs difference to PyTorch allowed')
    parser.set_defaults(func=_run)
