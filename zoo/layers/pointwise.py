"""A 1x1 convolution that runs as a Linear over the channels of a channels-last map.

:class:`PointwiseConv2d` is ``nn.Conv2d(in, out, 1)`` (same parameters ``weight [out, in, 1, 1]`` and ``bias [out]``,
so checkpoints load unchanged, and the same values to rounding). On a map in ``torch.channels_last`` memory format
the tokens ``[B, H, W, C]`` are a free view, and ``F.linear`` on them (one GEMM with the bias fused, and a GEMM
backward) is faster on CPU than the convolution, which takes PyTorch's generic ``slow_conv2d`` path for a 1x1 kernel
when its weight needs a gradient (see BENCHMARKS.md, RAVLT). The output is NCHW with channels-last strides, as the
convolution's. Other maps take the convolution.

:func:`is_channels_last` and :func:`to_channels_last` query and request that format safely inside ``torch.func``
transforms (``vmap(grad(...))`` per-sample gradients), where PyTorch cannot query or produce memory formats other
than the contiguous one: there a map counts as not channels-last and is left as it is (same values, the convolution
path).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module

from ._checks import check_bool, check_input_dtype, check_nchw, check_number, shape_str

__all__ = ['PointwiseConv2d', 'is_channels_last', 'to_channels_last']


def _in_functorch_transform(x: torch.Tensor) -> bool:
    """``x`` is wrapped by a ``torch.func`` transform (vmap, grad, jvp ...)."""
    if torch.jit.is_scripting() or torch.compiler.is_compiling():  # neither can call into torch._C here
        return False
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


@register_notrace_function  # branches on the tensor: an FX leaf
def is_channels_last(x: torch.Tensor) -> bool:
    """``x`` is a 4-D map with channels-last strides (False inside a ``torch.func`` transform)."""
    return x.dim() == 4 and not _in_functorch_transform(x) and x.is_contiguous(memory_format=torch.channels_last)


@register_notrace_function
def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x.contiguous(memory_format=torch.channels_last)`` for a 4-D map; inside a ``torch.func`` transform (or for
    another rank) ``x`` unchanged."""
    if x.dim() != 4 or _in_functorch_transform(x):
        return x
    return x.contiguous(memory_format=torch.channels_last)


@register_notrace_module  # a memory-format branch: an FX leaf, like nn.Conv2d
class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1, bias=bias)`` computed as a Linear on channels-last maps."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, device=None, dtype=None):
        """
        Args:
            in_channels: input channels.
            out_channels: output channels.
            bias: learn a bias.
            device: device of the parameters.
            dtype: dtype of the parameters.
        """
        check_number('in_channels', in_channels, 1, integer=True)
        check_number('out_channels', out_channels, 1, integer=True)
        check_bool('bias', bias)
        super().__init__(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, out_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, in_channels, H, W]`` -> ``[B, out_channels, H, W]`` (channels-last in, channels-last out).

        ``out_scale [out_channels]`` multiplies each output channel (a layer scale). Where the map has more pixels than
        the weight has input channels it is folded into the weight and bias (a product over the parameters, which are
        then the smaller operand, instead of a pass over the output, in the forward and in the backward); else the
        output is scaled.

        Raises:
            ValueError: ``out_scale`` not ``[out_channels]``.
        """
        check_nchw(x, self.in_channels, self.weight)
        weight, bias = self.weight, self.bias
        output_scale: Optional[torch.Tensor] = None
        if out_scale is not None:
            if out_scale.dim() != 1 or out_scale.shape[0] != self.out_channels:
                raise ValueError(f'out_scale must have shape [{self.out_channels}], got {shape_str(out_scale)}')
            check_input_dtype(out_scale, weight, 'out_scale')
            if x.numel() > x.shape[1] * weight.shape[1]:  # B * H * W > in_channels: fold into the parameters
                weight = weight * out_scale.reshape(-1, 1, 1, 1)
                bias = bias * out_scale if bias is not None else None
            else:
                output_scale = out_scale
        if is_channels_last(x):
            out = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)
        else:
            out = self._conv_forward(x, weight, bias)
        if output_scale is not None:
            out = out * output_scale.reshape(1, -1, 1, 1)
        return out
