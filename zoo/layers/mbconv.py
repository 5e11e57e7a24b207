"""The pre-norm inverted-bottleneck conv block (MBConv) of MaxViT and CoAtNet, NCHW.

:class:`MbConvBlock2d` is timm's ``maxxvit.MbConvBlock`` in its MaxViT configuration (depthwise stride, squeeze-excite
after the second norm)::

    shortcut = expand(avgpool2x2(x))                 # only when downsampling; expand only when channels change
    x = pre_norm(x)                                  # BN, no activation
    x = act(norm1(conv1_1x1(x)))                     # 1x1 expand to expand_ratio * out_chs, no bias
    x = act(norm2(conv2_kxk(x)))                     # depthwise kxk, stride 1 or 2, no bias
    x = se(x)                                        # squeeze-excite, rd = se_ratio * out_chs, SiLU, sigmoid
    x = shortcut + drop_path(conv3_1x1(x))           # 1x1 project to out_chs, with bias

Parameter names are timm's (``pre_norm``, ``conv1_1x1``, ``norm1``, ``conv2_kxk``, ``norm2``, ``se.fc1``,
``se.fc2``, ``conv3_1x1``, ``shortcut.expand``), so timm's MaxViT / CoAtNet checkpoints load without renames.

``padding='same'`` is TensorFlow's: a stride-2 conv on an even map pads one row/column at the bottom/right only
(timm's ``Conv2dSame``). The stride-2 shortcut pool is TensorFlow's 'SAME' 2x2 average, which on an odd map averages
the last row/column over its real values only (``ceil_mode``, padding excluded); on even maps it is a plain 2x2
average, as timm's. Both branches give ``ceil(H / 2)`` rows with either padding.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, SEModule, create_conv2d, get_act_layer, get_norm_act_layer, make_divisible

from ._checks import check_bool, check_drop, check_nchw, check_number

__all__ = ['MbConvBlock2d']

LayerType = Union[str, Callable[..., nn.Module]]


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A 1x1 conv as a matmul over channels-last tokens (the conv's own weights): on CPU PyTorch runs 1x1 convs on
    channels-last maps through its slow im2col path; the result is NCHW with channels-last strides."""
    return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)


class MbConvBlock2d(nn.Module):
    """Pre-norm MBConv: BN -> 1x1 expand -> BN-act -> depthwise kxk -> BN-act -> SE -> 1x1 project, plus shortcut."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            expand_ratio: float = 4.,
            kernel_size: int = 3,
            se_ratio: float = 0.25,
            act_layer: LayerType = 'gelu_tanh',
            se_act_layer: LayerType = 'silu',
            norm_layer: LayerType = 'batchnorm2d',
            norm_eps: float = 1e-3,
            padding: str = 'same',
            output_bias: bool = True,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chs: input channels.
            out_chs: output channels.
            stride: 1, or 2 to halve the map (in the depthwise conv, and a 2x2 average pool on the shortcut).
            expand_ratio: hidden channels over ``out_chs`` (rounded to a multiple of 8, as timm).
            kernel_size: depthwise kernel.
            se_ratio: squeeze-excite reduction channels over ``out_chs`` (0: no squeeze-excite).
            act_layer: activation after ``norm1`` and ``norm2`` (timm name or class).
            se_act_layer: activation inside the squeeze-excite.
            norm_layer: norm type (timm name, ``get_norm_act_layer``); ``pre_norm`` has no activation.
            norm_eps: epsilon of the three norms (1e-3 in MaxViT's TF weights).
            padding: conv padding: 'same' (TensorFlow's, asymmetric for stride 2) or '' (symmetric, PyTorch's).
            output_bias: bias on ``conv3_1x1`` and on the shortcut's 1x1 conv.
            drop_path: stochastic-depth rate of the residual branch.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside its valid values, naming it.
        """
        super().__init__()
        check_bool('output_bias', output_bias)
        dd = {'device': device, 'dtype': dtype}
        if in_chs < 1 or out_chs < 1:
            raise ValueError(f'in_chs and out_chs must be >= 1, got in_chs={in_chs}, out_chs={out_chs}')
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, got stride={stride}')
        check_number('expand_ratio', expand_ratio, 0, low_open=True)
        check_number('norm_eps', norm_eps, 0, low_open=True)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be an odd int >= 1, got kernel_size={kernel_size}')
        check_number('se_ratio', se_ratio, 0)
        if padding not in ('same', ''):
            raise ValueError(f"padding must be 'same' or '', got padding={padding!r}")
        check_drop('drop_path', drop_path)
        if stride == 1 and in_chs != out_chs:
            raise ValueError(f'in_chs must equal out_chs without downsampling (stride=1), '
                             f'got in_chs={in_chs}, out_chs={out_chs}')
        norm_act_layer = get_norm_act_layer(norm_layer, act_layer)
        mid_chs = make_divisible(out_chs * expand_ratio)
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride

        if stride == 2:
            self.shortcut = nn.Sequential(OrderedDict([
                ('pool', nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)),
                ('expand', nn.Conv2d(in_chs, out_chs, 1, bias=output_bias, **dd) if in_chs != out_chs
                    else nn.Identity()),
            ]))
        else:
            self.shortcut = nn.Identity()
        self.pre_norm = norm_act_layer(in_chs, eps=norm_eps, apply_act=False, **dd)
        self.conv1_1x1 = create_conv2d(in_chs, mid_chs, 1, **dd)
        self.norm1 = norm_act_layer(mid_chs, eps=norm_eps, **dd)
        self.conv2_kxk = create_conv2d(
            mid_chs, mid_chs, kernel_size, stride=stride, groups=mid_chs, padding=padding, **dd)
        self.norm2 = norm_act_layer(mid_chs, eps=norm_eps, **dd)
        if se_ratio > 0:
            self.se = SEModule(
                mid_chs, rd_channels=int(se_ratio * out_chs), act_layer=get_act_layer(se_act_layer), **dd)
        else:
            self.se = nn.Identity()
        self.conv3_1x1 = create_conv2d(mid_chs, out_chs, 1, bias=output_bias, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chs, H, W]`` -> ``[B, out_chs, ceil(H / stride), ceil(W / stride)]`` ('same' padding)."""
        check_nchw(x, self.in_chs, self.conv1_1x1.weight)
        # hasattr, not isinstance: TorchScript resolves it when compiling (a scripted Conv2d is no nn.Conv2d)
        if hasattr(self.shortcut, 'pool'):
            shortcut = self.shortcut.pool(x)
            if hasattr(self.shortcut.expand, 'weight'):
                shortcut = _pointwise(shortcut, self.shortcut.expand.weight, self.shortcut.expand.bias)
        else:
            shortcut = x
        x = self.norm1(_pointwise(self.pre_norm(x), self.conv1_1x1.weight, self.conv1_1x1.bias))
        x = self.se(self.norm2(self.conv2_kxk(x)))
        return self.drop_path(_pointwise(x, self.conv3_1x1.weight, self.conv3_1x1.bias)) + shortcut

    def extra_repr(self) -> str:
        return f'in_chs={self.in_chs}, out_chs={self.out_chs}, stride={self.stride}'
