"""A 1x1 convolution that runs as a Linear over the channels of a channels-last map.

:class:`PointwiseConv2d` is ``nn.Conv2d(in, out, 1)`` (same parameters ``weight [out, in, 1, 1]`` and ``bias [out]``,
so checkpoints load unchanged, and the same values to rounding). On a map in ``torch.channels_last`` memory format
the tokens ``[B, H, W, C]`` are a free view, and ``F.linear`` on them (one GEMM with the bias fused, and a GEMM
backward) is faster on CPU than the convolution, which takes PyTorch's generic ``slow_conv2d`` path for a 1x1 kernel
when its weight needs a gradient (see BENCHMARKS.md, RAVLT). The output is NCHW with channels-last strides, as the
convolution's. Other maps take the convolution.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ._checks import shape_str

__all__ = ['PointwiseConv2d']


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
        weight, bias = self.weight, self.bias
        output_scale: Optional[torch.Tensor] = None
        if out_scale is not None:
            if out_scale.dim() != 1 or out_scale.shape[0] != self.out_channels:
                raise ValueError(f'out_scale must have shape [{self.out_channels}], got {shape_str(out_scale)}')
            if x.numel() > x.shape[1] * weight.shape[1]:  # B * H * W > in_channels: fold into the parameters
                weight = weight * out_scale.reshape(-1, 1, 1, 1)
                bias = bias * out_scale if bias is not None else None
            else:
                output_scale = out_scale
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            out = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)
        else:
            out = self._conv_forward(x, weight, bias)
        if output_scale is not None:
            out = out * output_scale.reshape(1, -1, 1, 1)
        return out
