"""fvcore GMACs of zoo models with neighborhood attention counted, the convention of the official NAT numbers.

fvcore traces the model with ``torch.jit.trace`` and counts one multiply-add as one "flop" for convolutions, linear
layers, matmuls and einsums, plus ``5 * numel`` per affine LayerNorm; elementwise ops, softmax and pooling are free.
A fused neighborhood-attention call would either be invisible to it or be counted through whatever ops a backend
happens to use, so while counting, :class:`~zoo.layers.NeighborhoodAttention2d` calls a shape-only placeholder op
``zoo_flops::na2d`` instead, counted as the two matmuls of neighborhood attention::

    B * H * W * heads * prod(kernel_size) * (head_dim + head_dim_v)

over the (padded) map it attends on. The relative-position-bias add is not counted; NATTEN's own fvcore handle
adds ``B * H * W * heads * prod(kernel_size)`` for it (about 0.1 % of NAT's total). Global attention
(:class:`~zoo.layers.RpbAttention2d`) runs its explicit matmul path while counting, so fvcore sees it. A deformable
convolution (``torchvision::deform_conv2d``, LITv2's token merging) counts as a dense conv of its weight, the
convention of the official LITv2 counts (its offset conv is an ordinary conv).

This is the one GMACs counter of the project: the README's model table, the GMACs tests and the model card of
``python -m zoo.weights export`` use it. fvcore comes with the ``train`` and ``test`` extras (``pip install fvcore``).

A model on the ``meta`` device is counted without computing anything: ``torch.jit.trace`` cannot run the meta
kernels (PyTorch's Python meta convolution sees the traced sizes as tensors), so :class:`ShapeOnlyCounter`, a
``TorchFunctionMode``, records the same calls that the tracer records as ``aten::`` ops (``F.linear``, ``matmul``,
``bmm``, ``addmm``, ``conv*d``, ``einsum``, the norms, ``interpolate``, ``adaptive_avg_pool2d``, ``grid_sample``,
``torchvision::deform_conv2d``, the ``zoo_flops::na2d`` placeholder) and counts them with fvcore's own handles on
their shapes. The counts equal fvcore's on the CPU for every row of the README table (checked once for all of
them, and by ``tests/zoo/models/test_gmacs.py`` for a few models); a 512 px MaxViT-XL is counted in a second instead
of a minute.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from zoo.layers import neighborhood as _na_layer

__all__ = ['count_gmacs', 'na_counting', 'ShapeOnlyCounter']


@torch.library.custom_op('zoo_flops::na2d', mutates_args=())
def _na2d_placeholder(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_h: int,
                      kernel_w: int) -> torch.Tensor:
    return torch.zeros(query.shape[:-1] + value.shape[-1:], dtype=value.dtype, device=value.device)


@_na2d_placeholder.register_fake
def _(query, key, value, kernel_h, kernel_w):
    return query.new_empty(query.shape[:-1] + value.shape[-1:])


def _placeholder_na2d_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_h: int,
                         kernel_w: int) -> torch.Tensor:
    """The placeholder op behind ``__torch_function__`` dispatch, so that :class:`ShapeOnlyCounter` sees it."""
    if torch.overrides.has_torch_function((query, key, value)):
        return torch.overrides.handle_torch_function(
            _placeholder_na2d_op, (query, key, value), query, key, value, kernel_h, kernel_w)
    return _na2d_placeholder(query, key, value, kernel_h, kernel_w)


def _placeholder_na2d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None,
                      backend=None, stride=1, return_lse=False):
    kernel_h, kernel_w = kernel_size if isinstance(kernel_size, Sequence) else (kernel_size, kernel_size)
    return _placeholder_na2d_op(query, key, value, int(kernel_h), int(kernel_w))


def _na2d_flop_handle(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape
    q_shape, v_shape = get_shape(inputs[0]), get_shape(inputs[2])
    kernel_h, kernel_w = inputs[3].toIValue(), inputs[4].toIValue()
    tokens_heads = 1
    for s in q_shape[:-1]:
        tokens_heads *= s
    return tokens_heads * kernel_h * kernel_w * (q_shape[-1] + v_shape[-1])


def _deform_conv2d_flop_handle(inputs, outputs) -> int:
    """``torchvision::deform_conv2d(input, weight, offset, mask, bias, ...)`` as a dense conv of its weight (the
    convention of the official LITv2 counts; the bilinear sampling is free)."""
    from fvcore.nn.jit_handles import conv_flop_count, get_shape
    return conv_flop_count(get_shape(inputs[0]), get_shape(inputs[1]), get_shape(outputs[0]), transposed=False)


def _deform_conv2d_ops() -> tuple:
    """The ``torch.ops.torchvision.deform_conv2d`` callables a ``TorchFunctionMode`` sees (none without
    torchvision)."""
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)
        packet = torch.ops.torchvision.deform_conv2d
    except (ImportError, AttributeError, RuntimeError):
        return ()
    return packet, packet.default


@contextlib.contextmanager
def na_counting(model: nn.Module) -> Iterator[None]:
    """Within the block, NA layers call the countable placeholder and global attention runs unfused."""
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, 'fused_attn')]
    original = _na_layer.na2d
    try:
        _na_layer.na2d = _placeholder_na2d
        for m, _ in fused:
            m.fused_attn = False
        yield
    finally:
        _na_layer.na2d = original
        for m, value in fused:
            m.fused_attn = value


def _import_fvcore():
    with warnings.catch_warnings():
        # fvcore scripts a helper at import, which recent torch releases flag as deprecated
        warnings.filterwarnings('ignore', message='.*torch.jit.script.*', category=FutureWarning)
        try:
            import fvcore.nn
            import fvcore.nn.jit_handles
        except ImportError as e:
            raise ImportError('count_gmacs needs fvcore: pip install fvcore') from e
    return fvcore.nn


class _Value:
    """The part of a ``torch._C.Value`` that fvcore's handles read: the shape of a tensor, or a constant."""

    def __init__(self, value: Any):
        self.value = value

    def isCompleteTensor(self) -> bool:  # noqa: N802  (fvcore's name)
        return isinstance(self.value, torch.Tensor)

    def type(self) -> '_Value':
        return self

    def sizes(self) -> List[int]:
        return list(self.value.shape)

    def toIValue(self) -> Any:  # noqa: N802
        return self.value

    def node(self) -> '_Value':  # einsum reads its operands as the inputs of a ListConstruct node
        return self

    def inputs(self) -> List['_Value']:
        return [_Value(v) for v in self.value]


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _handles() -> Dict[Callable, Callable[[tuple, dict, Any], float]]:
    """Python-level call -> its MACs with fvcore's handle of the ``aten::`` op the tracer records for it."""
    jh = _import_fvcore().jit_handles
    v = _Value

    def linear(a, k, out):
        return jh.linear_flop_jit([v(a[0]), v(_arg(a, k, 1, 'weight'))], [v(out)])

    def matmul(a, k, out):
        return jh.matmul_flop_jit([v(a[0]), v(_arg(a, k, 1, 'other'))], [v(out)])

    def rmatmul(a, k, out):
        return jh.matmul_flop_jit([v(a[1]), v(a[0])], [v(out)])

    def bmm(a, k, out):
        return jh.bmm_flop_jit([v(a[0]), v(_arg(a, k, 1, 'mat2'))], [v(out)])

    def addmm(a, k, out):
        return jh.addmm_flop_jit([v(a[0]), v(_arg(a, k, 1, 'mat1')), v(_arg(a, k, 2, 'mat2'))], [v(out)])

    def conv(transposed: bool):
        def count(a, k, out):
            if isinstance(_arg(a, k, 4, 'padding', 0), str):
                return 0  # 'same' / 'valid' padding: traced as aten::_convolution_mode, which fvcore does not count
            return jh.conv_flop_count(list(a[0].shape), list(_arg(a, k, 1, 'weight').shape), list(out.shape),
                                      transposed=transposed)
        return count

    def einsum(a, k, out):
        operands = a[1] if len(a) == 2 and isinstance(a[1], (list, tuple)) else a[1:]
        return jh.einsum_flop_jit([v(a[0]), v(list(operands))], [v(out)])

    def norm(weight_index: int, weight_name: str):
        def count(a, k, out):
            return jh.norm_flop_counter(1)([v(a[0]), v(_arg(a, k, weight_index, weight_name))], [v(out)])
        return count

    def batch_norm(a, k, out):  # F.batch_norm(input, running_mean, running_var, weight, bias, training, ...)
        inputs = [v(a[0]), v(_arg(a, k, 3, 'weight')), None, None, None, v(bool(_arg(a, k, 5, 'training', False)))]
        return jh.batchnorm_flop_jit(inputs, [v(out)])

    def interpolate(a, k, out):
        mode = _arg(a, k, 3, 'mode', 'nearest')
        scale = {'nearest': 1, 'bilinear': 4}.get(mode, 0) if a[0].dim() == 4 else 0
        return scale * out.numel()  # aten::upsample_nearest2d / upsample_bilinear2d

    def elementwise(input_scale: float, output_scale: float):
        def count(a, k, out):
            return jh.elementwise_flop_counter(input_scale, output_scale)([v(a[0])], [v(out)])
        return count

    def na2d(a, k, out):
        return _na2d_flop_handle([v(t) for t in a[:5]], [v(out)])

    def deform_conv2d(a, k, out):
        return _deform_conv2d_flop_handle([v(a[0]), v(a[1])], [v(out)])

    T = torch.Tensor
    return {
        F.linear: linear, torch.matmul: matmul, T.matmul: matmul, T.__matmul__: matmul, T.__rmatmul__: rmatmul,
        torch.mm: matmul, T.mm: matmul, torch.bmm: bmm, T.bmm: bmm, torch.addmm: addmm, T.addmm: addmm,
        torch.conv1d: conv(False), torch.conv2d: conv(False), torch.conv3d: conv(False),
        torch.conv_transpose1d: conv(True), torch.conv_transpose2d: conv(True), torch.conv_transpose3d: conv(True),
        torch.einsum: einsum, F.layer_norm: norm(2, 'weight'), torch.layer_norm: norm(2, 'weight'),
        F.group_norm: norm(2, 'weight'), torch.group_norm: norm(2, 'weight'), F.instance_norm: norm(3, 'weight'),
        F.batch_norm: batch_norm, F.interpolate: interpolate, F.adaptive_avg_pool2d: elementwise(1, 0),
        torch._C._nn.adaptive_avg_pool2d: elementwise(1, 0), F.grid_sample: elementwise(0, 4),
        _placeholder_na2d_op: na2d, **{op: deform_conv2d for op in _deform_conv2d_ops()},
    }


class ShapeOnlyCounter(TorchFunctionMode):
    """Counts fvcore MACs of the calls made under it from their shapes alone (meta tensors are enough).

    Only the outermost call of a counted op is counted (the tracer also records an ``aten::`` op once, not the ops
    inside it): calls made while a handled op runs are not seen.
    """

    def __init__(self):
        super().__init__()
        self.handles = _handles()
        self.total = 0.

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        handle = self.handles.get(func)
        if handle is not None:
            self.total += float(handle(args, kwargs, out))
        return out


def count_gmacs(model: nn.Module, input_size: Tuple[int, int, int] = (3, 224, 224), batch_size: int = 1) -> float:
    """fvcore GMACs (1e9 multiply-adds) of one forward of ``model`` on a ``[batch_size, *input_size]`` input.

    A model on the ``meta`` device is counted from shapes by :class:`ShapeOnlyCounter` (nothing computed); any
    other is traced and run by fvcore's ``FlopCountAnalysis``. Both give the same count.

    Raises:
        ImportError: fvcore is not installed.
    """
    fvcore_nn = _import_fvcore()
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(batch_size, *input_size, device=param.device if param is not None else None)
    try:
        with na_counting(model), torch.no_grad():
            if x.device.type == 'meta':
                with ShapeOnlyCounter() as counter:
                    model(x)
                total = counter.total
            else:
                counter = fvcore_nn.FlopCountAnalysis(model, x).set_op_handle(
                    'zoo_flops::na2d', _na2d_flop_handle, 'torchvision::deform_conv2d', _deform_conv2d_flop_handle)
                counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
                total = counter.total()
    finally:
        model.train(was_training)
    return total / 1e9


# Bi-level routing attention (zoo.layers.routing) needs no placeholder op: its layers carry ``fused_attn`` like timm's
# attention, so ``na_counting`` switches them to ``gather_routed_attention``, the official gather followed by two
# matmuls that fvcore counts as ``B * heads * regions * M * topk * Mk * (head_dim + head_dim_v)`` MACs over the padded
# map, plus the routing-logit matmul ``B * regions * regions * qk_dim``; the gather, the region means and top-k are
# free. That is how the official BiFormer numbers were counted (biformer_tiny 2.228 GMACs at 224 px).
