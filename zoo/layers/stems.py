"""Stems that turn an NCHW image into a token map: channels-last (``...Cl``) or NCHW (``...2d``).

* :class:`ConvStemCl`: two 3x3 stride-2 convolutions with nothing between them, then a norm (NAT / DiNAT
  tokenizer; parameters ``proj.0``, ``proj.1``, ``norm``).
* :class:`PatchEmbedCl`: one non-overlapping ``patch_size`` convolution, then a norm (Swin-style; DiNAT_s and the
  isotropic NAT models; parameters ``proj``, ``norm``). Inputs not divisible by the patch are zero-padded on the
  right/bottom.
* :class:`ConvStem2d`: conv3x3/s2 -> norm -> act -> conv3x3/s2 -> norm, NCHW (BiFormer-T/S/B; parameters
  ``conv1``, ``norm1``, ``conv2``, ``norm2``).
* :class:`PatchEmbed2d`: the ``patch_size`` convolution and a norm after it, or before it with ``norm_first`` (the
  BiFormer-STL stem, and its BN -> conv2x2 downsampler), NCHW; parameters ``proj``, ``norm``. Sizes not divisible
  by the patch are floored as by the official convs, or zero-padded with ``pad=True``.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ._checks import check_bool, check_nchw, check_size_pair
from .partition import pad_needed

__all__ = ['ConvStemCl', 'PatchEmbedCl', 'ConvStem2d', 'PatchEmbed2d']


class ConvStemCl(nn.Module):
    """Overlapping 4x downsampling stem: conv3x3/s2 (``in_chans -> embed_dim // 2``), conv3x3/s2, then norm."""

    def __init__(
            self,
            in_chans: int = 3,
            embed_dim: int = 64,
            norm_layer: Optional[Callable[..., nn.Module]] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: image channels.
            embed_dim: output channels; the first conv has ``embed_dim // 2``.
            norm_layer: channels-last norm applied last, or None.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: ``in_chans`` or ``embed_dim`` below 1 (``embed_dim`` below 2).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if in_chans < 1:
            raise ValueError(f'in_chans must be >= 1, got in_chans={in_chans}')
        if embed_dim < 2:
            raise ValueError(f'embed_dim must be >= 2, got embed_dim={embed_dim}')
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1, **dd),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1, **dd),
        )
        self.norm = norm_layer(embed_dim, **dd) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, ceil(H/4), ceil(W/4), embed_dim]``."""
        check_nchw(x, self.proj[0].in_channels, self.proj[0].weight)
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x)


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class PatchEmbedCl(nn.Module):
    """Non-overlapping patch embedding (conv with kernel = stride = ``patch_size``), then norm, channels-last out."""

    def __init__(
            self,
            patch_size: Union[int, Tuple[int, int]] = 4,
            in_chans: int = 3,
            embed_dim: int = 96,
            norm_layer: Optional[Callable[..., nn.Module]] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        """
        Args:
            patch_size: patch height and width.
            in_chans: image channels.
            embed_dim: output channels.
            norm_layer: channels-last norm applied last, or None.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: a size or channel count below 1.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        patch_size = check_size_pair('patch_size', patch_size)
        if in_chans < 1 or embed_dim < 1:
            raise ValueError(f'in_chans and embed_dim must be >= 1, got in_chans={in_chans}, embed_dim={embed_dim}')
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, **dd)
        self.norm = norm_layer(embed_dim, **dd) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, ceil(H/p), ceil(W/p), embed_dim]`` (right/bottom zero padding)."""
        check_nchw(x, self.proj.in_channels, self.proj.weight)
        H, W = x.shape[-2:]
        pad_b = -H % self.patch_size[0]
        pad_r = -W % self.patch_size[1]
        if pad_needed(pad_b, pad_r):
            x = F.pad(x, (0, pad_r, 0, pad_b))
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x)


class ConvStem2d(nn.Module):
    """Overlapping 4x downsampling stem, NCHW: conv3x3/s2 -> norm -> act -> conv3x3/s2 -> norm."""

    def __init__(
            self,
            in_chans: int = 3,
            embed_dim: int = 64,
            hidden_dim: Optional[int] = None,
            norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            bias: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: image channels.
            embed_dim: output channels.
            hidden_dim: channels after the first conv, default ``embed_dim // 2``.
            norm_layer: NCHW norm after each conv (default ``nn.BatchNorm2d``), or None.
            act_layer: activation between the two convs.
            bias: biases in the convs.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: a channel count below 1 (``embed_dim`` below 2 without ``hidden_dim``).
        """
        super().__init__()
        check_bool('bias', bias)
        dd = {'device': device, 'dtype': dtype}
        hidden_dim = hidden_dim or embed_dim // 2
        if in_chans < 1 or embed_dim < 1 or hidden_dim < 1:
            raise ValueError(f'in_chans, embed_dim and hidden_dim must be >= 1, got in_chans={in_chans}, '
                             f'embed_dim={embed_dim}, hidden_dim={hidden_dim}')
        self.conv1 = nn.Conv2d(in_chans, hidden_dim, kernel_size=3, stride=2, padding=1, bias=bias, **dd)
        self.norm1 = norm_layer(hidden_dim, **dd) if norm_layer is not None else nn.Identity()
        self.act = act_layer()
        self.conv2 = nn.Conv2d(hidden_dim, embed_dim, kernel_size=3, stride=2, padding=1, bias=bias, **dd)
        self.norm2 = norm_layer(embed_dim, **dd) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, embed_dim, ceil(H/4), ceil(W/4)]``."""
        check_nchw(x, self.conv1.in_channels, self.conv1.weight)
        x = self.act(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(x))


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class PatchEmbed2d(nn.Module):
    """Non-overlapping patch embedding (conv with kernel = stride = ``patch_size``) and a norm, NCHW in and out."""

    def __init__(
            self,
            patch_size: Union[int, Tuple[int, int]] = 4,
            in_chans: int = 3,
            embed_dim: int = 96,
            norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
            norm_first: bool = False,
            pad: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            patch_size: patch height and width.
            in_chans: input channels.
            embed_dim: output channels.
            norm_layer: NCHW norm (default ``nn.BatchNorm2d``), or None.
            norm_first: apply the norm to the ``in_chans`` input before the conv instead of after it.
            pad: zero-pad the right/bottom to a multiple of the patch; otherwise sizes are floored by the conv.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: a size or channel count below 1.
        """
        super().__init__()
        check_bool('norm_first', norm_first)
        check_bool('pad', pad)
        dd = {'device': device, 'dtype': dtype}
        patch_size = check_size_pair('patch_size', patch_size)
        if in_chans < 1 or embed_dim < 1:
            raise ValueError(f'in_chans and embed_dim must be >= 1, got in_chans={in_chans}, embed_dim={embed_dim}')
        self.patch_size = patch_size
        self.norm_first = norm_first
        self.pad = pad
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, **dd)
        norm_dim = in_chans if norm_first else embed_dim
        self.norm = norm_layer(norm_dim, **dd) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, embed_dim, H/p, W/p]`` (floored, or ceiled with ``pad``)."""
        check_nchw(x, self.proj.in_channels, self.proj.weight)
        if self.norm_first:
            x = self.norm(x)
        if self.pad:
            pad_b, pad_r = -x.shape[-2] % self.patch_size[0], -x.shape[-1] % self.patch_size[1]
            if pad_needed(pad_b, pad_r):
                x = F.pad(x, (0, pad_r, 0, pad_b))
        x = self.proj(x)
        return x if self.norm_first else self.norm(x)
