"""Deformable convolution with a learned offset conv, and LITv2's deformable token merging (DTM), channels-last.

* :class:`DeformConv2dPack`: a ``k x k`` deformable convolution whose sampling offsets come from a plain conv of the
  input (``conv_offset``: ``2 * k * k`` channels, same kernel / stride / padding, zero-initialised, so a fresh layer
  is an ordinary conv). Parameters ``weight [C_out, C_in, k, k]``, ``bias [C_out]``, ``conv_offset.weight`` /
  ``conv_offset.bias``: the names and shapes of the ``DeformConv2dPack`` in LITv2's ``mm_modules/DCN`` (and mmcv's),
  so official checkpoints load without renames. No compiled extension, no apex: by default it samples with
  ``F.grid_sample`` and multiplies (:func:`deform_conv2d_sampled`, vectorised on CPU, 3.5x faster than
  ``torchvision.ops.deform_conv2d`` in forward + backward), or runs ``torchvision.ops.deform_conv2d`` with
  ``impl='torchvision'``; both give the same result to float rounding. The offset channels are ``[dy, dx]`` per
  kernel position in row-major order and a sample off the map reads zero per bilinear corner, as in the official DCN
  kernels (checked against the official LITv2 code with non-trivial offsets; see
  ``tests/fixtures/make_litv2_fixtures.py``). fvcore counts the sampled path as the conv's MACs plus 4 per sample
  (its ``grid_sampler`` handle): +0.05% on LITv2-S. 16-bit inputs are convolved in float32 and cast back, as
  the official op under apex's ``amp.float_function``.
* :class:`DeformTokenMergeCl`: LITv2's DTM downsampling, ``DeformConv2dPack(C, C_out, 2, stride 2) -> BatchNorm2d
  -> GELU``, from a channels-last ``[B, H, W, C]`` map to ``[B, H', W', C_out]``. Odd sizes are floored, as the
  official detection / segmentation backbones do; an axis of length 1 (where the official conv fails) is zero-padded
  to 2 first, so every input size runs.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, to_2tuple
from torchvision.ops import deform_conv2d

from ._checks import check_bool, check_input_dtype, shape_str
from .partition import pad_needed

__all__ = ['DeformConv2dPack', 'DeformTokenMergeCl', 'deform_conv2d_sampled']

IMPLS = ('sampled', 'torchvision')


def deform_conv2d_sampled(
        x: torch.Tensor,
        offset: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        stride: Tuple[int, int] = (1, 1),
        padding: Tuple[int, int] = (0, 0),
        dilation: Tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` (one weight group, one offset group, no mask) as bilinear sampling with
    ``F.grid_sample`` followed by one matmul: the im2col of the official DCN kernels, vectorised.

    Kernel position ``k = (ky, kx)`` of output ``(i, j)`` reads the input at ``(i * sh - ph + ky * dh + dy, j * sw -
    pw + kx * dw + dx)`` with ``(dy, dx) = offset[:, 2k:2k + 2, i, j]``; bilinear, each corner off the map reads zero
    (``padding_mode='zeros'``), which is the DCN rule. Gradients flow to ``x``, ``offset``, ``weight`` and ``bias``.

    Args:
        x: ``[B, C, H, W]``.
        offset: ``[B, 2 * kh * kw, Ho, Wo]``.
        weight: ``[C_out, C, kh, kw]``.
        bias: ``[C_out]`` or None.
        stride, padding, dilation: per axis, as the conv.

    Returns:
        ``[B, C_out, Ho, Wo]``.
    """
    B, C, H, W = x.shape
    c_out, _, kh, kw = weight.shape
    Ho, Wo = offset.shape[2], offset.shape[3]
    K = kh * kw
    off = offset.view(B, K, 2, Ho, Wo)
    device, dtype = x.device, x.dtype
    ky = (torch.arange(kh, device=device, dtype=dtype) * dilation[0]).repeat_interleave(kw).view(1, K, 1, 1)
    kx = (torch.arange(kw, device=device, dtype=dtype) * dilation[1]).repeat(kh).view(1, K, 1, 1)
    py = torch.arange(Ho, device=device, dtype=dtype).view(1, 1, Ho, 1) * stride[0] - padding[0] + ky + off[:, :, 0]
    px = torch.arange(Wo, device=device, dtype=dtype).view(1, 1, 1, Wo) * stride[1] - padding[1] + kx + off[:, :, 1]
    # pixel p -> normalised (2p + 1) / size - 1 (align_corners=False: exact for maps of one row or column too)
    grid = torch.stack(((2 * px + 1) / W - 1, (2 * py + 1) / H - 1), dim=-1).view(B, K * Ho, Wo, 2)
    cols = F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)  # [B, C, K*Ho, Wo]
    out = weight.reshape(c_out, C * K) @ cols.view(B, C * K, Ho * Wo)
    if bias is not None:
        out = out + bias.view(1, c_out, 1)
    return out.view(B, c_out, Ho, Wo)


class DeformConv2dPack(nn.Module):
    """Deformable ``k x k`` convolution (one offset group) with its offsets predicted by ``conv_offset``; NCHW."""

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: Union[int, Tuple[int, int]],
            stride: Union[int, Tuple[int, int]] = 1,
            padding: Union[int, Tuple[int, int]] = 0,
            dilation: Union[int, Tuple[int, int]] = 1,
            bias: bool = True,
            impl: str = 'sampled',
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_channels: input channels.
            out_channels: output channels.
            kernel_size: ``(kh, kw)`` of the deformable kernel (and of ``conv_offset``).
            stride: stride of both convs.
            padding: zero padding of both convs.
            dilation: dilation of the deformable kernel (``conv_offset`` is not dilated, as in the official pack).
            bias: learn an output bias.
            impl: 'sampled' (:func:`deform_conv2d_sampled`: ``F.grid_sample`` + matmul, the default: 2x faster
                forward and 3.5x faster forward + backward than torchvision's CPU kernel) or 'torchvision'
                (``torchvision.ops.deform_conv2d``); both compute the same function.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: a channel count, kernel, stride or dilation below 1, a negative padding or an unknown
                ``impl``, naming it.
        """
        super().__init__()
        check_bool('bias', bias)
        dd = {'device': device, 'dtype': dtype}
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f'in_channels and out_channels must be >= 1, got in_channels={in_channels}, '
                             f'out_channels={out_channels}')
        self.kernel_size = _pair(kernel_size, 'kernel_size', 1)
        self.stride = _pair(stride, 'stride', 1)
        self.padding = _pair(padding, 'padding', 0)
        self.dilation = _pair(dilation, 'dilation', 1)
        if impl not in IMPLS:
            raise ValueError(f'impl must be one of {IMPLS}, got impl={impl!r}')
        self.impl = impl
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size, **dd))
        self.bias = nn.Parameter(torch.empty(out_channels, **dd)) if bias else None
        self.conv_offset = nn.Conv2d(
            in_channels, 2 * self.kernel_size[0] * self.kernel_size[1], self.kernel_size, stride=self.stride,
            padding=self.padding, bias=True, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s init for ``weight`` / ``bias`` and zero offsets (the official pack's init)."""
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            bound = 1 / (self.in_channels * self.kernel_size[0] * self.kernel_size[1]) ** 0.5
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, H, W]`` -> ``[B, out_channels, H', W']`` (conv output size)."""
        check_input_dtype(x, self.weight)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'x must have shape [B, {self.in_channels}, H, W], got {shape_str(x)}')
        offset = self.conv_offset(x)
        weight, bias = self.weight, self.bias
        dtype = x.dtype
        if dtype == torch.float16 or dtype == torch.bfloat16:
            # in float32, as the official op under apex's ``amp.float_function`` (torchvision's CPU kernel has no
            # 16-bit path either)
            x, offset, weight = x.float(), offset.float(), weight.float()
            bias = bias.float() if bias is not None else None
        if self.impl == 'torchvision':
            out = deform_conv2d(
                x, offset, weight, bias, stride=self.stride, padding=self.padding, dilation=self.dilation)
        else:
            out = deform_conv2d_sampled(x, offset, weight, bias, self.stride, self.padding, self.dilation)
        return out.to(dtype)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, '
                f'padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}')


def _pair(value, name: str, minimum: int) -> Tuple[int, int]:
    pair = tuple(to_2tuple(value))
    if len(pair) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in pair):
        raise ValueError(f'{name} must be an int or pair of ints >= {minimum}, got {name}={value!r}')
    return pair


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class DeformTokenMergeCl(nn.Module):
    """LITv2's deformable token merging: deformable conv 2x2 / stride 2 -> BatchNorm2d -> GELU, channels-last."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            impl: str = 'sampled',
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: input channels.
            out_dim: output channels (LITv2: ``2 * dim``).
            act_layer: activation after the BatchNorm.
            impl: the deformable conv's implementation (see :class:`DeformConv2dPack`).
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: a channel count below 1.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim < 1 or out_dim < 1:
            raise ValueError(f'dim and out_dim must be >= 1, got dim={dim}, out_dim={out_dim}')
        self.dim = dim
        self.out_dim = out_dim
        self.dconv = DeformConv2dPack(dim, out_dim, kernel_size=2, stride=2, padding=0, impl=impl, **dd)
        self.norm = nn.BatchNorm2d(out_dim, **dd)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, max(H, 2) // 2, max(W, 2) // 2, out_dim]``."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f'x must have shape [B, H, W, {self.dim}], got {shape_str(x)}')
        check_input_dtype(x, self.dconv.weight)
        x = x.permute(0, 3, 1, 2)
        pad_b, pad_r = max(0, 2 - x.shape[2]), max(0, 2 - x.shape[3])
        if pad_needed(pad_b, pad_r):
            x = F.pad(x, (0, pad_r, 0, pad_b))
        x = self.norm(self.dconv(x))
        # one copy to a contiguous channels-last map: the blocks after it (norms, Linears, residual adds) would
        # otherwise each copy the NCHW-ordered memory again
        return self.act(x.permute(0, 2, 3, 1).contiguous())
