"""Bi-level routing attention (BRA).

Two BRA variants, each reproducing one official module of rayleizhu/BiFormer with its parameter names and shapes:

* :class:`BiLevelRoutingAttention` (channels-last, ``ops/bra_legacy.py``; BiFormer-T/S/B and BiFormer-STL): one
  ``qkv.qkv`` Linear ``C -> qk_dim + qk_dim + C``, an ``n_win x n_win`` region grid, region descriptors that are
  the means of q and k over each region (all ``qk_dim`` channels, so routing is shared by the heads), routing logits
  ``(q_r * scale) k_r^T``, ``torch.topk``, then per-head softmax attention of each query region over the tokens of
  its ``topk`` routed regions with ``scale = qk_dim ** -0.5`` (the full channel count, not the head dim), plus LePE
  (a depthwise ``side_dwconv`` conv on v over the whole map) before the ``wo`` Linear. Maps not divisible by
  ``n_win`` are zero-padded on the right/bottom **before** the projection (padded tokens carry the ``qkv`` bias
  and are attended, as the official ``auto_pad=True``) and the output is cropped.
* :class:`BiLevelRoutingAttention2d` (NCHW, ``ops/bra_nchw.py``; BiFormer-STL-nchw): 1x1-conv ``qkv_linear`` and
  ``output_linear``, region size ``(H // n_win, W // n_win)`` from the unpadded map, descriptors by
  ``avg_pool2d(ceil_mode=True, count_include_pad=False)`` of the detached q and k (so the region grid is
  ``ceil(H / rh) x ceil(W / rw)``), unscaled routing logits, q/k/v zero-padded **after** the projection with the
  padded keys left unmasked (logit 0, value 0), ``scale = C ** -0.5`` and LePE on the unpadded v.

The attention itself is :func:`zoo_kernels.routing.routed_attention` on the region-major layout ``[B, heads, regions,
tokens, head_dim]``; its backend is chosen by the kernel (``ZOO_BRA_BACKEND`` overrides). Routing, LePE, the
projections and the padding are plain PyTorch here. With ``fused_attn = False`` a layer runs the official
gather-then-matmul formulation instead; :func:`zoo.models._flops.count_gmacs` switches to it so that fvcore sees the
attention matmuls, counted as the official models were.

Where the official code cannot run, these layers choose:

* Any input size: the legacy layer pads to a multiple of ``n_win`` (the official asserts unless ``auto_pad``); the
  nchw layer uses a region size of at least 1 (the official one fails below ``n_win`` tokens) and routes to
  ``min(topk, regions)`` regions when the grid has fewer regions than ``topk`` (``torch.topk`` fails there).
* Routing modes of the legacy layer: 'none' (every released model), 'soft' (``soft_routing=True``: the routed key
  and value rows are scaled by the softmax of the kept routing logits) and 'hard' (``diff_routing=True`` without
  ``soft_routing``), which the official code leaves unimplemented (``NotImplementedError``). Here 'hard' is
  straight-through: the forward is exactly 'none' (weights of 1), the backward passes the gradient of the soft
  weights to the router, so ``diff_routing`` / ``param_routing`` train the routing without changing the outputs.

The blocks built on these layers (BiFormer's blocks and its stage-4 full attention with LePE) live next to the model,
in :mod:`zoo.models.biformer`. LePE is :class:`~zoo.layers.DwConvCl` / :class:`~zoo.layers.DwConv2d` and the
key/value pooling modes are :func:`~zoo.layers.spatial_pool_cl`, shared with the other families.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module

from zoo_kernels.routing import routed_attention

from ._checks import (
    check_bool,
    check_channels_last,
    check_nchw,
    check_nonempty,
    check_num_heads,
    check_number,
    check_qk_scale,
    shape_str,
)
from .partition import is_exporting, pad_needed
from .pos_conv import DwConv2d, DwConvCl
from .spatial_reduction import spatial_pool_cl

__all__ = [
    'RegionRouter', 'QkvLinear', 'BiLevelRoutingAttention', 'BiLevelRoutingAttention2d', 'gather_routed_attention',
    'check_routing_args',
]

KV_DOWNSAMPLE_MODES = ('identity', 'avgpool', 'maxpool', 'ada_avgpool', 'ada_maxpool')
PARAM_ATTENTION = ('qkvo', 'qkv')


def gather_routed_attention(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        r_idx: torch.Tensor,
        scale: float,
        r_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Routed attention in the official formulation: gather the routed K/V rows, then two dense matmuls.

    The layers use it only with ``fused_attn = False`` (MAC counting with fvcore, which sees these matmuls but not
    the fused op). Same arguments and result as :func:`zoo_kernels.routing.routed_attention` with ``r_idx`` shared by
    the heads (``[B, nR, topk]``); memory grows with ``topk``.
    """
    B, heads, n_q, M, _ = query.shape
    Mk = key.shape[3]
    topk = r_idx.shape[-1]
    index = r_idx.reshape(B, 1, n_q * topk, 1, 1)
    k_sel = torch.gather(key, 2, index.expand(-1, heads, -1, Mk, key.shape[-1]))
    v_sel = torch.gather(value, 2, index.expand(-1, heads, -1, Mk, value.shape[-1]))
    k_sel = k_sel.reshape(B, heads, n_q, topk, Mk, -1)
    v_sel = v_sel.reshape(B, heads, n_q, topk, Mk, -1)
    if r_weight is not None:
        w = r_weight.reshape(B, 1, n_q, topk, 1, 1)
        k_sel, v_sel = k_sel * w, v_sel * w
    attn = (query * scale) @ k_sel.flatten(3, 4).transpose(-1, -2)
    return attn.softmax(dim=-1) @ v_sel.flatten(3, 4)


@register_notrace_function
def check_region_tokens(q_r: torch.Tensor, k_r: torch.Tensor, qk_dim: int) -> None:
    """Region descriptors ``q_r [B, nR, qk_dim]`` and ``k_r [B, nRk, qk_dim]``, floating point, of one dtype."""
    if q_r.dim() != 3 or k_r.dim() != 3 or q_r.shape[-1] != qk_dim or k_r.shape[-1] != qk_dim or \
            k_r.shape[0] != q_r.shape[0]:
        raise ValueError(f'q_r and k_r must be [B, nR, {qk_dim}] and [B, nRk, {qk_dim}], got q_r={shape_str(q_r)}, '
                         f'k_r={shape_str(k_r)}')
    if not q_r.is_floating_point() or k_r.dtype != q_r.dtype:
        raise TypeError(f'q_r and k_r must be floating point, of one dtype, got {q_r.dtype} and {k_r.dtype}')


class RegionRouter(nn.Module):
    """Region-to-region routing: the ``topk`` key regions of highest ``(emb(q_r) * scale) emb(k_r)^T`` per query region.

    Returns the indices and the softmax of the kept logits (used by soft and straight-through hard routing).
    """

    def __init__(
            self,
            qk_dim: int,
            topk: int,
            scale: Optional[float] = None,
            param_routing: bool = False,
            diff_routing: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            qk_dim: channels of the region descriptors.
            topk: regions kept per query region (clamped to the number of key regions at run time).
            scale: multiplier of the query descriptors, or None for unscaled logits (nchw BRA).
            param_routing: a learned Linear ``emb`` on both descriptors (needs ``diff_routing``).
            diff_routing: let gradients flow into the descriptors (otherwise they are detached).
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: ``topk < 1``, or ``param_routing`` without ``diff_routing``.
        """
        super().__init__()
        check_bool('param_routing', param_routing)
        check_bool('diff_routing', diff_routing)
        check_number('topk', topk, 1, integer=True)
        check_number('qk_dim', qk_dim, 1, integer=True)
        self.qk_dim = qk_dim
        if param_routing and not diff_routing:
            raise ValueError('param_routing=True needs diff_routing=True: a routing Linear on detached descriptors '
                             'would never be trained')
        self.topk = topk
        self.scale = scale
        self.diff_routing = diff_routing
        self.emb = nn.Linear(qk_dim, qk_dim, device=device, dtype=dtype) if param_routing else nn.Identity()

    def forward(self, q_r: torch.Tensor, k_r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``q_r [B, nR, c]``, ``k_r [B, nRk, c]`` -> ``(r_weight, r_idx)``, both ``[B, nR, min(topk, nRk)]``."""
        check_region_tokens(q_r, k_r, self.qk_dim)
        if not self.diff_routing:
            q_r, k_r = q_r.detach(), k_r.detach()
        q_r, k_r = self.emb(q_r), self.emb(k_r)
        if self.scale is not None:
            q_r = q_r * self.scale
        logits = q_r @ k_r.transpose(-2, -1)
        top_logits, r_idx = torch.topk(logits, k=min(self.topk, logits.shape[-1]), dim=-1)
        return top_logits.softmax(dim=-1), r_idx

    def extra_repr(self) -> str:
        return f'topk={self.topk}, scale={self.scale}, diff_routing={self.diff_routing}'


class QkvLinear(nn.Module):
    """One Linear ``dim -> qk_dim + qk_dim + dim`` (q, k, v concatenated), the official ``qkv.qkv`` parameters."""

    def __init__(self, dim: int, qk_dim: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        check_bool('bias', bias)
        check_number('dim', dim, 1, integer=True)
        check_number('qk_dim', qk_dim, 1, integer=True)
        self.dim = dim
        self.qk_dim = qk_dim
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels_last(x, self.dim, self.qkv.weight)
        return self.qkv(x)


def check_routing_args(
        dim: int, num_heads: int, n_win: int, topk: int, side_dwconv: int, qk_scale: Optional[float]) -> None:
    """Raise ``ValueError`` naming the first of the shared BRA / LePE-attention arguments outside its range."""
    check_num_heads(dim, num_heads)
    check_number('n_win', n_win, 1, integer=True)
    check_number('topk', topk, 1, integer=True)
    if side_dwconv < 0 or (side_dwconv and side_dwconv % 2 == 0):
        raise ValueError(f'side_dwconv must be 0 (no LePE) or an odd kernel size, got side_dwconv={side_dwconv}')
    check_qk_scale(qk_scale)


def lepe_conv(
        dim: int, side_dwconv: int, channels_last: bool = False, device=None, dtype=None,
) -> Optional[Union[DwConv2d, DwConvCl]]:
    """The LePE depthwise conv (``side_dwconv`` kernel) in the given layout, or None when ``side_dwconv`` is 0."""
    if not side_dwconv:
        return None
    return (DwConvCl if channels_last else DwConv2d)(dim, side_dwconv, device=device, dtype=dtype)


def _routed_attention_of_router(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor, scale: float,
                                r_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`routed_attention` of the router's indices: a topk over the regions' scores, in range by construction,
    so without the index-range check (a read of the indices on the host: one device sync per block on CUDA)."""
    return routed_attention(q, k, v, r_idx, scale=scale, r_weight=r_weight, check_indices=False)


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class BiLevelRoutingAttention(nn.Module):
    """Legacy bi-level routing attention over a channels-last map (BiFormer-T/S/B, BiFormer-STL)."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            n_win: int = 7,
            topk: int = 4,
            qk_dim: Optional[int] = None,
            qk_scale: Optional[float] = None,
            side_dwconv: int = 3,
            kv_downsample_mode: str = 'identity',
            kv_per_win: int = 4,
            kv_downsample_ratio: int = 4,
            param_attention: str = 'qkvo',
            param_routing: bool = False,
            diff_routing: bool = False,
            soft_routing: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the input, of v and of the output.
            num_heads: attention heads; must divide ``dim`` and ``qk_dim``.
            n_win: regions per side (``n_win ** 2`` regions).
            topk: key regions each query region attends, ``1 <= topk <= n_win ** 2``.
            qk_dim: channels of q and k (default ``dim``).
            qk_scale: logit scale, default ``qk_dim ** -0.5`` (used for routing and attention).
            side_dwconv: LePE depthwise kernel on v (odd), 0 for none.
            kv_downsample_mode: key/value tokens per region: 'identity' (every released model), 'avgpool' /
                'maxpool' (pooled by ``kv_downsample_ratio``), 'ada_avgpool' / 'ada_maxpool' (adaptively pooled to
                ``kv_per_win x kv_per_win``). Routing and LePE always use the full-resolution k and v.
            kv_per_win: tokens per side of a key region for the 'ada_*' modes.
            kv_downsample_ratio: pooling kernel and stride for 'avgpool' / 'maxpool'.
            param_attention: 'qkvo' (output Linear ``wo``) or 'qkv' (no output projection).
            param_routing: a learned Linear ``router.emb`` on the region descriptors (needs ``diff_routing``).
            diff_routing: gradients reach the routing; with ``soft_routing=False`` this is straight-through hard
                routing (see the module docstring).
            soft_routing: scale the routed key and value rows by the routing softmax.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside the values above, naming it.
        """
        super().__init__()
        check_bool('soft_routing', soft_routing)  # param_routing and diff_routing: checked by the RegionRouter
        dd = {'device': device, 'dtype': dtype}
        qk_dim = qk_dim or dim
        check_routing_args(dim, num_heads, n_win, topk, side_dwconv, qk_scale)
        if qk_dim % num_heads:
            raise ValueError(f'num_heads must divide qk_dim={qk_dim}, got num_heads={num_heads}')
        if topk > n_win * n_win:
            raise ValueError(f'topk must be <= n_win ** 2 = {n_win * n_win} regions, got topk={topk}')
        if kv_downsample_mode not in KV_DOWNSAMPLE_MODES:
            raise ValueError(
                f'kv_downsample_mode must be one of {KV_DOWNSAMPLE_MODES}, '
                f'got kv_downsample_mode={kv_downsample_mode!r}')
        if kv_downsample_mode.startswith('ada_') and kv_per_win < 1:
            raise ValueError(f'kv_per_win must be >= 1, got kv_per_win={kv_per_win}')
        if kv_downsample_mode in ('avgpool', 'maxpool') and kv_downsample_ratio < 1:
            raise ValueError(f'kv_downsample_ratio must be >= 1, got kv_downsample_ratio={kv_downsample_ratio}')
        if param_attention not in PARAM_ATTENTION:
            raise ValueError(
                f'param_attention must be one of {PARAM_ATTENTION}, got param_attention={param_attention!r}')
        self.dim = dim
        self.qk_dim = qk_dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = qk_scale or qk_dim ** -0.5
        self.kv_downsample_mode = kv_downsample_mode
        self.kv_per_win = kv_per_win
        self.kv_downsample_ratio = kv_downsample_ratio
        self.routing_mode = 'soft' if soft_routing else 'hard' if diff_routing else 'none'
        self.fused_attn = True

        self.lepe = lepe_conv(dim, side_dwconv, channels_last=True, **dd)
        self.router = RegionRouter(
            qk_dim, topk, scale=self.scale, param_routing=param_routing, diff_routing=diff_routing, **dd)
        self.qkv = QkvLinear(dim, qk_dim, **dd)
        self.wo = nn.Linear(dim, dim, **dd) if param_attention == 'qkvo' else nn.Identity()

    def _kv_down(self, kv: torch.Tensor) -> torch.Tensor:
        """``[B, nR, rh, rw, c]`` -> ``[B, nR, Mk, c]`` key/value tokens per region."""
        B, n_r, rh, rw, c = kv.shape
        mode = self.kv_downsample_mode
        if mode == 'identity' or (mode in ('avgpool', 'maxpool') and self.kv_downsample_ratio == 1):
            return kv.reshape(B, n_r, rh * rw, c)
        size = self.kv_per_win if mode.startswith('ada_') else self.kv_downsample_ratio
        x = spatial_pool_cl(kv.reshape(B * n_r, rh, rw, c), mode[:-len('pool')], size)
        return x.reshape(B, n_r, -1, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Routed attention over the ``n_win x n_win`` regions of ``x``.

        Args:
            x: ``[B, H, W, dim]``, any ``H, W >= 1``.

        Returns:
            ``[B, H, W, dim]``.
        """
        check_channels_last(x, self.dim, self.qkv.qkv.weight)
        check_nonempty(x)
        B, H, W, C = x.shape
        n = self.n_win
        pad_b, pad_r = -H % n, -W % n
        if pad_needed(pad_b, pad_r):
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        rh, rw = Hp // n, Wp // n
        heads, qk = self.num_heads, self.qk_dim

        qkv = self.qkv(x)  # [B, Hp, Wp, 2 qk + C]
        # region-major [B, nR, rh, rw, 2 qk + C]; region id = row * n_win + column
        qkv_r = qkv.reshape(B, n, rh, n, rw, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, n * n, rh, rw, -1)
        q, kv = qkv_r.split([qk, qk + C], dim=-1)
        r_weight, r_idx = self.router(q.mean([2, 3]), kv[..., :qk].mean([2, 3]))

        kv = self._kv_down(kv)
        q = q.reshape(B, n * n, rh * rw, heads, qk // heads).permute(0, 3, 1, 2, 4)
        k = kv[..., :qk].unflatten(-1, (heads, qk // heads)).permute(0, 3, 1, 2, 4)
        v = kv[..., qk:].unflatten(-1, (heads, C // heads)).permute(0, 3, 1, 2, 4)
        if self.routing_mode == 'soft':
            weight = r_weight
        elif self.routing_mode == 'hard':
            # straight-through: exactly 1 in the forward, the softmax's gradient in the backward
            weight = 1. + (r_weight - r_weight.detach())
        else:
            weight = None
        if torch.jit.is_scripting():
            out = torch.ops.zoo.routed_attention(q, k, v, r_idx, self.scale, weight)
        elif self.fused_attn:
            out = self._routed_attention(q, k, v, r_idx, weight)
        else:
            out = gather_routed_attention(q, k, v, r_idx, self.scale, r_weight=weight)
        # [B, heads, nR, M, C/heads] -> [B, Hp, Wp, C]
        out = out.reshape(B, heads, n, n, rh, rw, -1).permute(0, 2, 4, 3, 5, 1, 6).reshape(B, Hp, Wp, C)

        if self.lepe is not None:
            out = out + self.lepe(qkv[..., 2 * qk:])
        out = self.wo(out)
        if pad_needed(pad_b, pad_r):
            out = out[:, :H, :W].contiguous()
        return out

    @torch.jit.unused
    def _routed_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor,
                          r_weight: Optional[torch.Tensor]) -> torch.Tensor:
        # eager: the functional API; scripted code calls the same API as the dispatcher op
        return _routed_attention_of_router(q, k, v, r_idx, self.scale, r_weight)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, qk_dim={self.qk_dim}, num_heads={self.num_heads}, n_win={self.n_win}, '
                f'topk={self.topk}, routing={self.routing_mode}, kv_downsample_mode={self.kv_downsample_mode}')


def _region_means(x: torch.Tensor, region: Tuple[int, int]) -> torch.Tensor:
    """``avg_pool2d(x, region, ceil_mode=True, count_include_pad=False)`` of a ``[B, C, H, W]`` map as a zero pad,
    a reshape and sums divided by the valid-token counts: the region size may be a symbolic size (``torch.export``),
    which a pooling kernel (an ONNX attribute) cannot be."""
    B, C, H, W = x.shape
    rh, rw = region
    gh, gw = (H + rh - 1) // rh, (W + rw - 1) // rw
    pad = [0, gw * rw - W, 0, gh * rh - H]
    sums = F.pad(x, pad).reshape(B, C, gh, rh, gw, rw).sum(dim=(3, 5))
    ones = F.pad(torch.ones(1, 1, H, W, device=x.device, dtype=x.dtype), pad)
    counts = ones.reshape(1, 1, gh, rh, gw, rw).sum(dim=(3, 5))
    return sums / counts


@register_notrace_module  # shape-dependent control flow (input checks, padding): an FX leaf
class BiLevelRoutingAttention2d(nn.Module):
    """nchw bi-level routing attention (BiFormer-STL-nchw): 1x1-conv projections, pooling-based region descriptors."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            n_win: int = 7,
            topk: int = 4,
            qk_scale: Optional[float] = None,
            side_dwconv: int = 3,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the input and output (q, k and v have ``dim`` channels each).
            num_heads: attention heads; must divide ``dim``.
            n_win: the region size is ``(H // n_win, W // n_win)`` (at least 1) of the unpadded map.
            topk: key regions each query region attends (at most the number of regions of the map).
            qk_scale: attention logit scale, default ``dim ** -0.5``. Routing logits are never scaled.
            side_dwconv: LePE depthwise kernel on v (odd), 0 for none.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside the values above, naming it.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_routing_args(dim, num_heads, n_win, topk, side_dwconv, qk_scale)
        self.dim = dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = qk_scale or dim ** -0.5
        self.fused_attn = True

        self.lepe = lepe_conv(dim, side_dwconv, **dd)
        self.router = RegionRouter(dim, topk, scale=None)
        self.qkv_linear = nn.Conv2d(dim, 3 * dim, kernel_size=1, **dd)
        self.output_linear = nn.Conv2d(dim, dim, kernel_size=1, **dd)

    def _to_regions(self, x: torch.Tensor, grid: Tuple[int, int], region: Tuple[int, int]) -> torch.Tensor:
        """``[B, C, gh*rh, gw*rw]`` -> ``[B, heads, gh*gw, rh*rw, C/heads]``."""
        B, C = x.shape[:2]
        x = x.reshape(B, self.num_heads, C // self.num_heads, grid[0], region[0], grid[1], region[1])
        return x.permute(0, 1, 3, 5, 4, 6, 2).reshape(B, self.num_heads, grid[0] * grid[1], region[0] * region[1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Routed attention over regions of ``(H // n_win, W // n_win)`` tokens.

        Args:
            x: ``[B, dim, H, W]``, any ``H, W >= 1``.

        Returns:
            ``[B, dim, H, W]``.
        """
        check_nchw(x, self.dim, self.qkv_linear.weight)
        check_nonempty(x)
        B, C, H, W = x.shape
        region = (max(1, H // self.n_win), max(1, W // self.n_win))
        q, k, v = self.qkv_linear(x).chunk(3, dim=1)

        # region means over the valid tokens only; the grid is ceil(H / rh) x ceil(W / rw)
        if is_exporting():  # the region size follows the symbolic map size, which a pooling kernel attribute cannot
            q_r, k_r = _region_means(q.detach(), region), _region_means(k.detach(), region)
        else:
            q_r = F.avg_pool2d(q.detach(), kernel_size=region, ceil_mode=True, count_include_pad=False)
            k_r = F.avg_pool2d(k.detach(), kernel_size=region, ceil_mode=True, count_include_pad=False)
        grid = (q_r.shape[-2], q_r.shape[-1])
        _, r_idx = self.router(q_r.permute(0, 2, 3, 1).flatten(1, 2), k_r.flatten(2).transpose(1, 2))

        Hp, Wp = grid[0] * region[0], grid[1] * region[1]
        if pad_needed(Hp - H, Wp - W):
            # zero padding after the projection; the padded keys stay unmasked (logit 0, value 0), as official
            pad = (0, Wp - W, 0, Hp - H)
            qp, kp, vp = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
        else:
            qp, kp, vp = q, k, v
        qp, kp, vp = (self._to_regions(t, grid, region) for t in (qp, kp, vp))
        if torch.jit.is_scripting():
            out = torch.ops.zoo.routed_attention(qp, kp, vp, r_idx, self.scale, None)
        elif self.fused_attn:
            out = self._routed_attention(qp, kp, vp, r_idx, None)
        else:
            out = gather_routed_attention(qp, kp, vp, r_idx, self.scale)
        # [B, heads, nR, M, C/heads] -> [B, C, Hp, Wp]
        out = out.reshape(B, self.num_heads, grid[0], grid[1], region[0], region[1], -1)
        out = out.permute(0, 1, 6, 2, 4, 3, 5).reshape(B, C, Hp, Wp)
        if pad_needed(Hp - H, Wp - W):
            out = out[:, :, :H, :W]
        if self.lepe is not None:
            out = out + self.lepe(v)
        return self.output_linear(out)

    @torch.jit.unused
    def _routed_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor,
                          r_weight: Optional[torch.Tensor]) -> torch.Tensor:
        # eager: the functional API; scripted code calls the same API as the dispatcher op
        return _routed_attention_of_router(q, k, v, r_idx, self.scale, r_weight)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}'
