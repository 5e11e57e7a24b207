"""Depthwise convolutions on a token map, the positional encodings of conv-augmented transformers.

* :class:`DwConv2d` / :class:`DwConvCl`: a depthwise ``k x k`` convolution with stride 1 and zero "same" padding, on
  an NCHW / a channels-last ``[B, H, W, C]`` map. It is the LePE of an attention layer (locally-enhanced positional
  encoding: the attention adds ``DwConv(v)`` or ``DwConv(x)`` to its output before the projection; BiFormer, RAVLT,
  Agent attention's ``dwc``) and the depthwise conv inside a ConvFFN (PVTv2, LITv2).
* :class:`Cpe2d` / :class:`CpeCl`: the conditional positional encoding ``x + DwConv(x)``, applied before a block
  (BiFormer's ``pos_embed``, RAVLT's ``cpe``).

All four subclass ``nn.Conv2d``: their parameters are ``weight [C, 1, k, k]`` and ``bias [C]`` directly, the
official names of ``lepe`` / ``pos_embed`` / ``dwc`` convs, so checkpoints load without renames.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ['DwConv2d', 'DwConvCl', 'Cpe2d', 'CpeCl']


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
        super().__init__(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim, H, W]`` -> ``[B, dim, H, W]``."""
        return self._conv_forward(x, self.weight, self.bias)


class DwConvCl(DwConv2d):
    """:class:`DwConv2d` on a channels-last ``[B, H, W, C]`` map (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]``."""
        return self._conv_forward(x.permute(0, 3, 1, 2), self.weight, self.bias).permute(0, 2, 3, 1)


class Cpe2d(DwConv2d):
    """Conditional positional encoding ``x + DwConv(x)``, NCHW."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim, H, W]`` -> ``[B, dim, H, W]``."""
        return x + self._conv_forward(x, self.weight, self.bias)


class CpeCl(DwConvCl):
    """Conditional positional encoding ``x + DwConv(x)``, channels-last ``[B, H, W, C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]``."""
        return x + self._conv_forward(x.permute(0, 3, 1, 2), self.weight, self.bias).permute(0, 2, 3, 1)
