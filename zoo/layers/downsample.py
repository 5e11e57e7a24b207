"""2x spatial downsamplers for channels-last (``...Cl``) and NCHW (``...2d``) token maps.

* :class:`ConvDownsampleCl`: conv3x3/s2 without bias, then norm (NAT / DiNAT; parameters ``reduction``, ``norm``).
* :class:`ConvDownsample2d`: the same on NCHW maps, with a conv bias and a BatchNorm2d by default (BiFormer-T/S/B;
  parameters ``reduction``, ``norm``).
* :class:`PatchMergingCl`: Swin patch merging, 2x2 neighbours concatenated, norm, then a bias-free Linear
  (DiNAT_s; parameters ``norm``, ``reduction``). Odd sizes are zero-padded on the right/bottom.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ._checks import check_bool, check_channels_last, check_nchw
from .partition import pad_needed

__all__ = ['ConvDownsampleCl', 'ConvDownsample2d', 'PatchMergingCl']


class ConvDownsampleCl(nn.Module):
    """Overlapping 2x downsampling: conv3x3, stride 2, padding 1, no bias, then a channels-last norm."""

    def __init__(
            self,
            dim: int,
            out_dim: Optional[int] = None,
            norm_layer: Optional[Callable[..., nn.Module]] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: input channels.
            out_dim: output channels, default ``2 * dim``.
            norm_layer: norm over the output channels, or None.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: a channel count below 1.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        out_dim = out_dim or 2 * dim
        if dim < 1 or out_dim < 1:
            raise ValueError(f'dim and out_dim must be >= 1, got dim={dim}, out_dim={out_dim}')
        self.reduction = nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1, bias=False, **dd)
        self.norm = norm_layer(out_dim, **dd) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, ceil(H/2), ceil(W/2), out_dim]``."""
        check_channels_last(x, self.reduction.in_channels, self.reduction.weight)
        x = self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(x)


class ConvDownsample2d(nn.Module):
    """Overlapping 2x downsampling, NCHW: conv3x3, stride 2, padding 1, then a norm."""

    def __init__(
            self,
            dim: int,
            out_dim: Optional[int] = None,
            norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
            bias: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: input channels.
            out_dim: output channels, default ``2 * dim``.
            norm_layer: NCHW norm over the output channels (default ``nn.BatchNorm2d``), or None.
            bias: a bias in the conv.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: a channel count below 1.
        """
        super().__init__()
        check_bool('bias', bias)
        dd = {'device': device, 'dtype': dtype}
        out_dim = out_dim or 2 * dim
        if dim < 1 or out_dim < 1:
            raise ValueError(f'dim and out_dim must be >= 1, got dim={dim}, out_dim={out_dim}')
        self.reduction = nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1, bias=bias, **dd)
        self.norm = norm_layer(out_dim, **dd) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim, H, W]`` -> ``[B, out_dim, ceil(H/2), ceil(W/2)]``."""
        check_nchw(x, self.reduction.in_channels, self.reduction.weight)
        return self.norm(self.reduction(x))


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class PatchMergingCl(nn.Module):
    """Swin patch merging: ``[x(0,0), x(1,0), x(0,1), x(1,1)]`` of each 2x2 cell -> norm(4C) -> Linear(4C, out)."""

    def __init__(
            self,
            dim: int,
            out_dim: Optional[int] = None,
            norm_layer: Optional[Callable[..., nn.Module]] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: input channels.
            out_dim: output channels, default ``2 * dim``.
            norm_layer: norm over the ``4 * dim`` merged channels, or None.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: a channel count below 1.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        out_dim = out_dim or 2 * dim
        if dim < 1 or out_dim < 1:
            raise ValueError(f'dim and out_dim must be >= 1, got dim={dim}, out_dim={out_dim}')
        self.norm = norm_layer(4 * dim, **dd) if norm_layer is not None else nn.Identity()
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, ceil(H/2), ceil(W/2), out_dim]``."""
        check_channels_last(x, self.reduction.in_features // 4, self.reduction.weight)
        B, H, W, C = x.shape
        pad_b, pad_r = H % 2, W % 2
        if pad_needed(pad_b, pad_r):
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            H, W = H + pad_b, W + pad_r
        # [B, H/2, dy, W/2, dx, C] -> [B, H/2, W/2, dx, dy, C]: channel blocks ordered (0,0), (1,0), (0,1), (1,1)
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        x = self.norm(x)
        return self.reduction(x)
