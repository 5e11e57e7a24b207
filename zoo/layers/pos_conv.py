"""Depthwise convolutions on a token map, the positional encodings of conv-augmented transformers.

* :class:`DwConv2d` / :class:`DwConvCl`: a depthwise ``k x k`` convolution with stride 1 and zero "same" padding, on
  an NCHW / a channels-last ``[B, H, W, C]`` map. It is the LePE of an attention layer (locally-enhanced positional
  encoding: the attention adds ``DwConv(v)`` or ``DwConv(x)`` to its output before the projection; BiFormer, RAVLT,
  Agent attention's ``dwc``) and the depthwise conv inside a ConvFFN (PVTv2, LITv2).
* :class:`Cpe2d` / :class:`CpeCl`: the conditional positional encoding ``x + DwConv(x)``, applied before a block
  (BiFormer's ``pos_embed``, RAVLT's ``cpe``).

All four subclass ``nn.Conv2d``: their parameters are ``weight [C, 1, k, k]`` and ``bias [C]`` directly, the
official names of ``lepe`` / ``pos_embed`` / ``dwc`` convs, so checkpoints load without renames. All four compute
:func:`depthwise_conv2d`, whose CPU backward for kernels wider than 3 (the 5x5 LePE of RAVLT and BiFormer) avoids
oneDNN's slow weight gradient there (BENCHMARKS.md, RAVLT-S training step).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module

from ._checks import check_bool, check_channels_last, check_nchw, shape_str

__all__ = ['DwConv2d', 'DwConvCl', 'Cpe2d', 'CpeCl', 'depthwise_conv2d']

# oneDNN's depthwise weight gradient is fast up to this kernel width (any height) and 7-12x its forward above
_FAST_WEIGHT_GRAD_WIDTH = 3


def _depthwise_param_grads(
        grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias_grad: bool) -> List[Optional[torch.Tensor]]:
    """``[d loss / d weight [C, 1, k, k], d loss / d bias [C] or None]`` of a stride-1, ``k // 2``-padded depthwise conv
    of ``x [B, C, H, W]`` with output gradient ``grad [B, C, H, W]``, for a kernel wider than 3.

    The kernel's columns are cut into slices of three (the last may overlap the one before); a slice's gradient is
    that of a ``k x 3`` conv whose column offsets are those of the slice, which oneDNN computes fast. For the slice
    with offsets ``a .. a + 2`` (``-k//2 <= a <= k//2 - 2``): on ``x`` padded by ``k//2 - 1`` columns a side and
    padded by one more in the conv, output column ``u`` reads columns ``u - k//2 .. u - k//2 + 2`` of ``x``, so the
    output gradient is ``grad`` moved right by ``a + k//2`` (zeros elsewhere).
    """
    C, _, kh, kw = weight.shape
    half = kw // 2
    x = F.pad(x, [half - 1, half - 1])
    slice_weight = weight.new_empty(C, 1, kh, 3)  # only its shape is read
    starts = list(range(-half, half - 1, 3))
    if starts[-1] != half - 2:
        starts.append(half - 2)
    pieces: List[torch.Tensor] = []
    grad_bias: Optional[torch.Tensor] = None
    covered = 0  # kernel columns done
    for a in starts:
        shift = a + half
        g = F.pad(grad, [shift, 2 * half - 2 - shift])
        want_bias = bias_grad and grad_bias is None  # the padding adds zeros: any slice's bias gradient is the one
        _, part, part_bias = torch.ops.aten.convolution_backward(
            g, x, slice_weight, [C], [1, 1], [kh // 2, 1], [1, 1], False, [0, 0], C, [False, True, want_bias])
        if want_bias:
            grad_bias = part_bias
        pieces.append(part[..., covered - shift:])
        covered = shift + 3
    return [torch.cat(pieces, dim=-1), grad_bias]


class _DepthwiseConv2dCpu(torch.autograd.Function):
    """Depthwise conv (stride 1, ``k // 2`` zero padding) with a faster CPU backward: the input gradient as the
    forward conv of the flipped kernel (a fast oneDNN path), the weight gradient by
    :func:`_depthwise_param_grads`. The backward is made of differentiable ops (double backward works)."""

    generate_vmap_rule = True  # torch.func transforms (per-sample gradients) see through it

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip([-2, -1]), padding=weight.shape[-1] // 2, groups=weight.shape[0])
        if ctx.needs_input_grad[1]:
            grad_weight, grad_bias = _depthwise_param_grads(grad, x, weight, ctx.needs_input_grad[2])
        elif ctx.needs_input_grad[2]:
            grad_bias = grad.sum([0, 2, 3])
        return grad_x, grad_weight, grad_bias


def _use_cpu_backward(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if torch.compiler.is_exporting() or not torch.is_grad_enabled():
        return False
    if weight.shape[-1] <= _FAST_WEIGHT_GRAD_WIDTH or x.device.type != 'cpu' or torch.is_autocast_enabled('cpu'):
        return False
    return x.dtype == weight.dtype and x.dtype in (torch.float32, torch.float64)


@register_notrace_function  # branches on the device and dtype: an FX leaf function
def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depthwise convolution of ``x [B, C, H, W]`` (any memory format) with ``weight [C, 1, k, k]`` (odd ``k``), stride
    1, zero padding ``k // 2``: ``F.conv2d(x, weight, bias, padding=k // 2, groups=C)``, the same values. On CPU, for
    ``k > 3`` where a gradient is recorded (float32 / float64, no autocast; eager or under ``torch.compile``, which
    traces it, not while exporting), its backward is :class:`_DepthwiseConv2dCpu`'s.

    Raises:
        ValueError: ``weight`` not ``[C, 1, k, k]`` with an odd ``k``, or ``x`` not ``[B, C, H, W]`` for its ``C``.
    """
    if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3] or weight.shape[3] % 2 == 0:
        raise ValueError(f'weight must have shape [C, 1, k, k] with an odd k, got {shape_str(weight)}')
    if x.dim() != 4 or x.shape[1] != weight.shape[0]:
        raise ValueError(f'x must have shape [B, {weight.shape[0]}, H, W], got {shape_str(x)}')
    padding, groups = weight.shape[-1] // 2, weight.shape[0]
    if torch.jit.is_scripting():
        return F.conv2d(x, weight, bias, padding=padding, groups=groups)
    if _use_cpu_backward(x, weight):
        return _DepthwiseConv2dCpu.apply(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=padding, groups=groups)


@register_notrace_module  # depthwise_conv2d branches on the device and dtype: an FX leaf (with its subclasses)
class DwConv2d(nn.Conv2d):
    """Depthwise ``k x k`` convolution, stride 1, zero padding ``k // 2`` (output size = input size), NCHW."""

    def __init__(self, dim: int, kernel_size: int = 3, bias: bool = True, device=None, dtype=None):
        """
        Args:
            dim: channels of the input and output (one filter per channel).
            kernel_size: odd kernel size, >= 1.
            bias: learn a per-channel bias.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: ``dim < 1`` or ``kernel_size`` not an odd int >= 1.
        """
        if dim < 1:
            raise ValueError(f'dim must be >= 1, got dim={dim}')
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be an odd int >= 1, got kernel_size={kernel_size!r}')
        check_bool('bias', bias)
        super().__init__(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias, device=device, dtype=dtype)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return depthwise_conv2d(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim, H, W]`` -> ``[B, dim, H, W]``."""
        check_nchw(x, self.in_channels, self.weight)
        return self._conv_forward(x, self.weight, self.bias)


class DwConvCl(DwConv2d):
    """:class:`DwConv2d` on a channels-last ``[B, H, W, C]`` map (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]``."""
        check_channels_last(x, self.in_channels, self.weight)
        return self._conv_forward(x.permute(0, 3, 1, 2), self.weight, self.bias).permute(0, 2, 3, 1)


class Cpe2d(DwConv2d):
    """Conditional positional encoding ``x + DwConv(x)``, NCHW."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim, H, W]`` -> ``[B, dim, H, W]``."""
        check_nchw(x, self.in_channels, self.weight)
        return x + self._conv_forward(x, self.weight, self.bias)


class CpeCl(DwConvCl):
    """Conditional positional encoding ``x + DwConv(x)``, channels-last ``[B, H, W, C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]``."""
        check_channels_last(x, self.in_channels, self.weight)
        return x + self._conv_forward(x.permute(0, 3, 1, 2), self.weight, self.bias).permute(0, 2, 3, 1)
