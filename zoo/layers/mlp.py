"""MLPs with a depthwise convolution between the two Linears (ConvFFN), channels-last.

:class:`ConvFfnCl` is PVTv2's ``Mlp`` with ``DWConv`` (and its 'linear' variant's extra ReLU) and LITv2's ``DWMlp``:
``fc1 -> [ReLU] -> depthwise 3x3 conv (bias, no residual) -> act -> fc2``, on ``[B, H, W, C]`` maps of any size. It
computes what timm's ``timm.models.pvt_v2.MlpWithDepthwiseConv`` computes on ``[B, H*W, C]`` tokens, with the same
parameter names (``fc1``, ``dwconv``, ``fc2``). The official PVTv2 / LITv2 checkpoints nest the conv one level deeper
(``mlp.dwconv.dwconv.weight``): their checkpoint filters rename ``.dwconv.dwconv.`` to ``.dwconv.``, as timm's
``pvt_v2.checkpoint_filter_fn`` does.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from ._checks import check_bool, check_drop, check_input_dtype, shape_str
from .pos_conv import DwConvCl

__all__ = ['ConvFfnCl']


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class ConvFfnCl(nn.Module):
    """ConvFFN: ``fc1 -> [ReLU] -> DwConv -> act -> drop -> fc2 -> drop`` over a channels-last map."""

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
            bias: bool = True,
            drop: float = 0.,
            kernel_size: int = 3,
            extra_relu: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_features: input channels.
            hidden_features: channels of ``fc1``'s output and of the depthwise conv (default ``in_features``).
            out_features: output channels (default ``in_features``).
            act_layer: activation after the depthwise conv.
            norm_layer: must be None (accepted for the ``mlp_layer`` signature of timm's blocks).
            bias: biases in ``fc1`` and ``fc2`` (the depthwise conv always has one).
            drop: dropout after the activation and after ``fc2``.
            kernel_size: depthwise kernel (odd).
            extra_relu: a ReLU between ``fc1`` and the conv (PVTv2's ``linear=True`` models).
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: a channel count below 1, ``drop`` outside [0, 1), a ``norm_layer``, or an even
                ``kernel_size``.
        """
        super().__init__()
        check_bool('bias', bias)
        check_bool('extra_relu', extra_relu)
        dd = {'device': device, 'dtype': dtype}
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        if min(in_features, hidden_features, out_features) < 1:
            raise ValueError(
                f'in_features, hidden_features and out_features must be >= 1, got in_features={in_features}, '
                f'hidden_features={hidden_features}, out_features={out_features}')
        check_drop('drop', drop)
        if norm_layer is not None:
            raise ValueError(f'norm_layer must be None: ConvFfnCl has no hidden norm, got norm_layer={norm_layer!r}')
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, **dd)
        self.relu = nn.ReLU() if extra_relu else nn.Identity()
        self.dwconv = DwConvCl(hidden_features, kernel_size, **dd)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, in_features]`` -> ``[B, H, W, out_features]``."""
        check_input_dtype(x, self.fc1.weight)
        if x.dim() != 4 or x.shape[-1] != self.fc1.in_features:
            raise ValueError(f'x must have shape [B, H, W, {self.fc1.in_features}], got {shape_str(x)}')
        x = self.fc1(x)
        x = self.dwconv(self.relu(x))
        x = self.drop(self.act(x))
        x = self.fc2(x)
        return self.drop(x)
