"""Agent attention (Han et al., "Agent Attention: On the Integration of Softmax and Linear Attention", ECCV 2024).

A small set of ``n = p * p`` agent tokens ``A``, the queries average-pooled to a ``p x p`` grid, first gathers from
the keys and values with softmax attention, then broadcasts back to the queries::

    agent_v = softmax(A K^T * s + position_bias) V          # [n, d] per head: agents attend to the keys
    out     = softmax(Q A^T * s + agent_bias) agent_v        # [N, d]: queries attend to the agents
    out     = proj(out + dwc(V))                             # depthwise 3x3 conv of V on the map

with ``s = head_dim ** -0.5``. Cost ``O(N n d)``: linear in the number of tokens. The biases are the official ones
(LeapLabTHU/Agent-Attention, ``agent_transformer/models/agent_{swin,pvt,deit}.py``), per head and agent:

* ``an_bias [h, n, 7, 7]`` (agent -> key) and ``na_bias [h, n, 7, 7]`` (query -> agent), bilinearly interpolated to
  the key map and the query map;
* ``ah_bias [1, h, n, Hk, 1] + aw_bias [1, h, n, 1, Wk]`` (agent -> key row / column) and
  ``ha_bias [1, h, H, 1, n] + wa_bias [1, h, 1, W, n]`` (query row / column -> agent), sized for ``resolution``;
* with a class token (DeiT): ``ac_bias [1, h, n, 1]`` (agent -> class key) and ``ca_bias [1, h, 1, n]`` (class
  query -> agents); the class token takes no part in the pooling nor in the DWC.

Both softmax steps run through ``F.scaled_dot_product_attention`` with the summed biases as an additive float
``attn_mask`` broadcast over the batch (exact: the official code adds the same bias to the same logits), so the
flash / memory-efficient kernels apply on GPU; ``fused_attn = False`` runs the official explicit matmuls (what fvcore
counts). Layers:

* :class:`AgentAttention`: one ``qkv`` projection (Agent-Swin, Agent-DeiT). Channels-last maps ``[B, H, W, C]``, or
  tokens ``[B, P + H * W, C]`` with ``size=(H, W)`` and ``P = num_prefix_tokens`` class tokens first (DeiT).
* :class:`AgentSpatialReductionAttentionCl`: PVT's ``q`` / ``kv`` projections with optional spatial reduction of
  the keys and values (:class:`~zoo.layers.SpatialReductionAttentionCl`'s ``sr`` conv + ``norm``; the DWC then runs
  on V bilinearly upsampled to the query map, as the official code).

Other map sizes: the official layers are built for one resolution; ``an_bias`` / ``na_bias`` are interpolated to the
actual map (as the official code interpolates them to its window), and here the row / column biases ``ah``, ``aw``,
``ha``, ``wa`` are linearly interpolated along their axis (``align_corners=False``) when the map differs from
``resolution``; at ``resolution`` nothing changes. Non-square maps work the same way (the agents are always a
``p x p`` adaptive pool of the query map, as officially).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, to_2tuple, trunc_normal_, use_fused_attn
from torch._subclasses.fake_tensor import is_fake

from ._checks import (
    check_bool,
    check_drop,
    check_input_dtype,
    check_nonempty,
    check_num_heads,
    check_number,
    check_qk_scale,
    shape_str,
)
from .partition import is_exporting, pad_needed
from .spatial_reduction import SpatialReductionAttentionCl

__all__ = [
    'AgentAttention', 'AgentSpatialReductionAttentionCl', 'agent_attention', 'agent_pool_size', 'resize_bias_axis',
]

Size2 = Union[int, Tuple[int, int]]


def agent_pool_size(agent_num: int) -> int:
    """Side ``p`` of the ``p x p`` agent grid.

    Raises:
        ValueError: ``agent_num`` is not a perfect square >= 1 (the agents are a square pooling grid).
    """
    p = math.isqrt(agent_num) if isinstance(agent_num, int) and agent_num >= 1 else 0
    if p < 1 or p * p != agent_num:
        raise ValueError(f'agent_num must be a perfect square >= 1 (agents are a p x p pooled grid), '
                         f'got agent_num={agent_num!r}')
    return p


def resize_bias_axis(bias: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Linear interpolation (``align_corners=False``) of ``bias`` along ``dim`` to ``length``; identity at its own
    length. How the agent row / column biases follow another map size. While ``torch.export`` traces, always
    interpolated (the identity at the traced size), so that the exported graph follows the input size."""
    if bias.shape[dim] == length and not is_exporting():
        return bias
    moved = bias.movedim(dim, -1)
    out = F.interpolate(moved.reshape(1, -1, moved.shape[-1]), size=[length], mode='linear', align_corners=False)
    return out.reshape(list(moved.shape[:-1]) + [length]).movedim(-1, dim)


def _adaptive_pool_axis(n, p: int, device, dtype) -> torch.Tensor:
    """``[p, n]`` bin-averaging matrix of one axis: row ``i`` averages ``[floor(i * n / p), ceil((i + 1) * n / p))``
    (PyTorch's adaptive-pool bins). Tensor ops only, so that ``n`` may be a symbolic size (``torch.export``)."""
    i = torch.arange(p, device=device)
    lo = (i * n).div(p, rounding_mode='floor')
    hi = -((-(i + 1) * n).div(p, rounding_mode='floor'))
    j = torch.arange(n, device=device)
    inside = (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
    return inside.to(dtype) / (hi - lo).to(dtype)[:, None]


def _adaptive_pool_matrix(size: Tuple[int, int], p: int, device, dtype) -> torch.Tensor:
    """``[p * p, H * W]`` matrix ``M`` with ``M @ x_tokens == adaptive_avg_pool2d(x, p)`` (computed in float64 in
    eager, in ``dtype`` while exporting)."""
    work = dtype if is_exporting() else torch.float64
    rows, cols = _adaptive_pool_axis(size[0], p, device, work), _adaptive_pool_axis(size[1], p, device, work)
    mat = rows[:, None, :, None] * cols[None, :, None, :]
    return mat.reshape(p * p, size[0] * size[1]).to(device=device, dtype=dtype)


def _cacheable(t: torch.Tensor) -> bool:
    """A real tensor (not meta / fake) outside a ``torch.compile`` trace: derived tensors of it may be cached (a
    compiled graph computes them in the graph instead)."""
    if torch.compiler.is_compiling():
        return False
    return t.device.type != 'meta' and not is_fake(t)


def _size2(value: Size2, name: str) -> Tuple[int, int]:
    size = tuple(int(v) for v in to_2tuple(value))
    if len(size) != 2 or any(v < 1 for v in size):
        raise ValueError(f'{name} must be an int or (h, w) pair of ints >= 1, got {name}={value!r}')
    return size


def agent_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        agents: torch.Tensor,
        position_bias: torch.Tensor,
        agent_bias: torch.Tensor,
        scale: float,
        dropout_p: float = 0.,
        fused: bool = True,
) -> torch.Tensor:
    """The two softmax steps of agent attention.

    Args:
        q: ``[B, h, N, d]`` queries.
        k: ``[B, h, Nk, d]`` keys.
        v: ``[B, h, Nk, dv]`` values.
        agents: ``[B, h, n, d]`` agent tokens.
        position_bias: ``[1 or B, h, n, Nk]`` agent -> key bias.
        agent_bias: ``[1 or B, h, N, n]`` query -> agent bias.
        scale: logit scale.
        dropout_p: attention-probability dropout of both steps.
        fused: SDPA (True) or the official explicit matmuls.

    Returns:
        ``[B, h, N, dv]``.
    """
    if fused:
        agent_v = F.scaled_dot_product_attention(agents, k, v, attn_mask=position_bias, dropout_p=dropout_p,
                                                 scale=scale)
        return F.scaled_dot_product_attention(q, agents, agent_v, attn_mask=agent_bias, dropout_p=dropout_p,
                                              scale=scale)
    attn = ((agents * scale) @ k.transpose(-2, -1) + position_bias).softmax(dim=-1)
    agent_v = F.dropout(attn, dropout_p) @ v if dropout_p > 0. else attn @ v
    attn = ((q * scale) @ agents.transpose(-2, -1) + agent_bias).softmax(dim=-1)
    return (F.dropout(attn, dropout_p) if dropout_p > 0. else attn) @ agent_v


class _AgentBiases(nn.Module):
    """Agent parameters shared by the layers: the biases, the pooling grid and the DWC (official names)."""

    def _init_agent(
            self,
            dim: int,
            num_heads: int,
            agent_num: int,
            resolution: Tuple[int, int],
            kv_resolution: Tuple[int, int],
            num_prefix_tokens: int,
            bias_size: int,
            dd: dict,
    ) -> None:
        self.agent_num = agent_num
        self.pool_size = agent_pool_size(agent_num)
        self.resolution = resolution
        self.kv_resolution = kv_resolution
        self.num_prefix_tokens = num_prefix_tokens
        h, n = num_heads, agent_num
        self.dwc = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, **dd)
        self.an_bias = nn.Parameter(torch.zeros(h, n, bias_size, bias_size, **dd))
        self.na_bias = nn.Parameter(torch.zeros(h, n, bias_size, bias_size, **dd))
        self.ah_bias = nn.Parameter(torch.zeros(1, h, n, kv_resolution[0], 1, **dd))
        self.aw_bias = nn.Parameter(torch.zeros(1, h, n, 1, kv_resolution[1], **dd))
        self.ha_bias = nn.Parameter(torch.zeros(1, h, resolution[0], 1, n, **dd))
        self.wa_bias = nn.Parameter(torch.zeros(1, h, 1, resolution[1], n, **dd))
        names = ['an_bias', 'na_bias', 'ah_bias', 'aw_bias', 'ha_bias', 'wa_bias']
        if num_prefix_tokens:
            self.ac_bias = nn.Parameter(torch.zeros(1, h, n, num_prefix_tokens, **dd))
            self.ca_bias = nn.Parameter(torch.zeros(1, h, num_prefix_tokens, n, **dd))
            names += ['ac_bias', 'ca_bias']
        else:
            self.ac_bias = self.ca_bias = None
        for name in names:
            trunc_normal_(getattr(self, name), std=.02)
        self._bias_names = names
        # inference caches: the summed biases (keyed by the map sizes and the parameters' versions) and the pooling
        # matrices of the fused path; never filled with meta / fake tensors or under autograd
        self._bias_cache: dict = {}
        self._pool_cache: dict = {}

    def cached_agent_biases(self, size: Tuple[int, int], kv_size: Tuple[int, int],
                            dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`agent_biases` in ``dtype``, contiguous; cached while no gradient is recorded (eager only)."""
        if torch.jit.is_scripting():  # no cache in TorchScript: the biases are made per call
            pos, agent = self.agent_biases(size, kv_size)
            return pos.to(dtype), agent.to(dtype).contiguous()
        return self._cached_agent_biases(size, kv_size, dtype)

    @torch.jit.unused
    def _cached_agent_biases(self, size: Tuple[int, int], kv_size: Tuple[int, int],
                             dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        params = [getattr(self, n) for n in self._bias_names]
        if (torch.is_grad_enabled() and any(p.requires_grad for p in params) or not _cacheable(params[0])
                or not self.fused_attn or torch.jit.is_tracing()):
            # the explicit path (what fvcore traces) always computes the biases as the official code does
            pos, agent = self.agent_biases(size, kv_size)
            return pos.to(dtype), agent.to(dtype).contiguous()
        key = (size, kv_size, dtype, params[0].device, tuple((id(p), p._version) for p in params))
        hit = self._bias_cache.get(key[:4])
        if hit is None or hit[0] != key[4]:
            # made outside inference mode: a cached tensor must be usable by a later step that records a gradient
            with torch.inference_mode(False), torch.no_grad():  # in this order: inference_mode(False) enables grad
                pos, agent = self.agent_biases(size, kv_size)
                hit = (key[4], pos.to(dtype).contiguous(), agent.to(dtype).contiguous())
            if len(self._bias_cache) > 8:
                self._bias_cache.clear()
            self._bias_cache[key[:4]] = hit
        return hit[1], hit[2]

    def agent_biases(self, size: Tuple[int, int], kv_size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``position_bias [1, h, n, P + Hk * Wk]`` and ``agent_bias [1, h, P + H * W, n]`` for an ``size`` query
        map and a ``kv_size`` key map."""
        h, n = self.an_bias.shape[0], self.an_bias.shape[1]
        pos = F.interpolate(self.an_bias, size=[kv_size[0], kv_size[1]], mode='bilinear').reshape(1, h, n, -1)
        row_col = resize_bias_axis(self.ah_bias, kv_size[0], 3) + resize_bias_axis(self.aw_bias, kv_size[1], 4)
        pos = pos + row_col.reshape(1, h, n, -1)
        agent = F.interpolate(self.na_bias, size=[size[0], size[1]], mode='bilinear')
        agent = agent.reshape(1, h, n, -1).transpose(-2, -1)
        row_col = resize_bias_axis(self.ha_bias, size[0], 2) + resize_bias_axis(self.wa_bias, size[1], 3)
        agent = agent + row_col.reshape(1, h, -1, n)
        if self.ac_bias is not None:  # class-token biases (None without prefix tokens)
            if self.ca_bias is not None:
                pos = torch.cat([self.ac_bias, pos], dim=-1)
                agent = torch.cat([self.ca_bias, agent], dim=-2)
        return pos, agent

    def pool_agents(self, q_map: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` queries -> ``[B, n, C]`` agents (adaptive average pool to ``p x p``).

        The fused path pools with a matmul by the (cached) bin-averaging matrix, the same numbers as the official
        ``AdaptiveAvgPool2d`` (which the explicit path runs, so that fvcore counts it as on the official code).
        """
        if torch.jit.is_scripting():  # no cache in TorchScript
            return self._pool_explicit(q_map)
        return self._pool_cached(q_map)

    def _pool_explicit(self, q_map: torch.Tensor) -> torch.Tensor:
        B, C = q_map.shape[0], q_map.shape[3]
        pooled = F.adaptive_avg_pool2d(q_map.permute(0, 3, 1, 2), self.pool_size)
        return pooled.reshape(B, C, -1).transpose(1, 2)

    @torch.jit.unused
    def _pool_cached(self, q_map: torch.Tensor) -> torch.Tensor:
        B, H, W, C = q_map.shape
        if is_exporting():
            # adaptive_avg_pool2d exports with the bins of the traced size (a fixed kernel where it divided the map);
            # the matrix is built in the graph from the symbolic size, never cached
            mat = _adaptive_pool_matrix((H, W), self.pool_size, q_map.device, q_map.dtype)
        elif not (self.fused_attn and _cacheable(q_map)):
            return self._pool_explicit(q_map)
        else:
            key = (H, W, q_map.device, q_map.dtype)
            mat = self._pool_cache.get(key)
            if mat is None:
                with torch.inference_mode(False):  # usable by a later training step (as the biases above)
                    mat = _adaptive_pool_matrix((H, W), self.pool_size, q_map.device, q_map.dtype)
                if len(self._pool_cache) > 8:
                    self._pool_cache.clear()
                self._pool_cache[key] = mat
        return torch.matmul(mat, q_map.reshape(B, H * W, C))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, L, C]`` or ``[B, H, W, C]`` -> ``[B, h, L, d]``."""
        return t.reshape(t.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)

    def dwc_cl(self, v_map: torch.Tensor) -> torch.Tensor:
        """Depthwise 3x3 conv of a ``[B, H, W, C]`` map, channels-last out."""
        return self.dwc(v_map.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _check_common(dim: int, num_heads: int, qk_scale: Optional[float], attn_drop: float, proj_drop: float,
                  bias_size: int) -> None:
    check_num_heads(dim, num_heads)
    check_qk_scale(qk_scale)
    check_drop('attn_drop', attn_drop)
    check_drop('proj_drop', proj_drop)
    check_number('bias_size', bias_size, 1, integer=True)


@register_notrace_module  # shape-dependent control flow (input checks, caches): an FX leaf
class AgentAttention(_AgentBiases):
    """Agent attention with one ``qkv`` projection (Agent-Swin, Agent-DeiT), on a map or on prefixed tokens."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            agent_num: int = 49,
            resolution: Size2 = 14,
            num_prefix_tokens: int = 0,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            bias_size: int = 7,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels.
            num_heads: heads; must divide ``dim``.
            agent_num: number of agents ``n``; a perfect square (``p x p`` pooled grid).
            resolution: ``(H, W)`` map the row / column biases are sized for (official window; stage map for
                Agent-Swin, patch grid for Agent-DeiT).
            num_prefix_tokens: class tokens before the patch tokens (1 for Agent-DeiT: ``ac_bias`` / ``ca_bias``).
            qkv_bias: bias of ``qkv``.
            qk_scale: logit scale, default ``head_dim ** -0.5`` (the official layers always use the default).
            attn_drop: dropout of both attention maps.
            proj_drop: dropout after ``proj``.
            bias_size: side of ``an_bias`` / ``na_bias`` (official 7).
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside its valid values (``agent_num`` not a square, ...), naming it.
        """
        super().__init__()
        check_bool('qkv_bias', qkv_bias)
        dd = {'device': device, 'dtype': dtype}
        _check_common(dim, num_heads, qk_scale, attn_drop, proj_drop, bias_size)
        resolution = _size2(resolution, 'resolution')
        if num_prefix_tokens < 0:
            raise ValueError(f'num_prefix_tokens must be >= 0, got num_prefix_tokens={num_prefix_tokens}')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self._init_agent(dim, num_heads, agent_num, resolution, resolution, num_prefix_tokens, bias_size, dd)

    def forward(self, x: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Agent attention over a map.

        Args:
            x: ``[B, H, W, dim]`` (no prefix tokens), or ``[B, P + H * W, dim]`` tokens with ``size``.
            size: ``(H, W)`` of the token grid; required for 3-D ``x``.

        Returns:
            The shape of ``x``.

        Raises:
            ValueError: ``x`` or ``size`` does not match.
        """
        check_input_dtype(x, self.proj.weight)
        check_nonempty(x)
        P = self.num_prefix_tokens
        if x.dim() == 4 and x.shape[-1] == self.dim and P == 0 and size is None:
            B, H, W, C = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
            tokens = x.reshape(B, H * W, C)
        elif x.dim() == 3 and x.shape[-1] == self.dim and size is not None:
            H, W = size
            B, L, C = x.shape[0], x.shape[1], x.shape[2]
            if H < 1 or W < 1 or L != P + H * W:
                raise ValueError(f'x must have {P} + H * W tokens for size=({H}, {W}), got {shape_str(x)}')
            tokens = x
        else:
            expected = f'[B, H, W, {self.dim}]' if P == 0 else f'[B, {P} + H * W, {self.dim}] with size=(H, W)'
            given = 'None' if size is None else f'({size[0]}, {size[1]})'
            raise ValueError(f'x must have shape {expected}, got {shape_str(x)} with size={given}')
        qkv = self.qkv(tokens)  # [B, L, 3C]
        q, k, v = qkv.chunk(3, dim=-1)
        agents = self.pool_agents(q[:, P:].reshape(B, H, W, C))
        pos_bias, agent_bias = self.cached_agent_biases((H, W), (H, W), q.dtype)
        out = agent_attention(
            self._split(q), self._split(k), self._split(v), self._split(agents), pos_bias, agent_bias, self.scale,
            self.attn_drop.p if self.training else 0., self.fused_attn)
        out = out.transpose(1, 2).reshape(B, -1, C)
        dwc = self.dwc_cl(v[:, P:].reshape(B, H, W, C)).reshape(B, H * W, C)
        if P:
            out = torch.cat([out[:, :P], out[:, P:] + dwc], dim=1)
        else:
            out = out + dwc
        out = self.proj_drop(self.proj(out))
        return out.reshape(x.shape)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, agent_num={self.agent_num}, '
                f'resolution={self.resolution}, num_prefix_tokens={self.num_prefix_tokens}')


@register_notrace_module  # shape-dependent control flow (input checks, caches): an FX leaf
class AgentSpatialReductionAttentionCl(SpatialReductionAttentionCl, _AgentBiases):
    """Agent attention with PVT's ``q`` / ``kv`` projections and optional spatial reduction (Agent-PVT)."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            agent_num: int = 49,
            resolution: Size2 = 14,
            sr_ratio: int = 1,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            bias_size: int = 7,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels.
            num_heads: heads; must divide ``dim``.
            agent_num: number of agents; a perfect square.
            resolution: ``(H, W)`` query map the biases are sized for (official ``sqrt(num_patches)``); the
                key map is ``resolution // sr_ratio``.
            sr_ratio: kernel and stride of the key/value reduction conv ``sr`` (1: none; the official Agent-PVT
                variants use 1).
            qkv_bias: bias of ``q`` and ``kv``.
            qk_scale: logit scale, default ``head_dim ** -0.5``.
            attn_drop: dropout of both attention maps.
            proj_drop: dropout after ``proj``.
            bias_size: side of ``an_bias`` / ``na_bias`` (official 7).
            norm_layer: norm after ``sr``.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside its valid values, naming it.
        """
        _check_common(dim, num_heads, qk_scale, attn_drop, proj_drop, bias_size)
        resolution = _size2(resolution, 'resolution')
        if sr_ratio < 1:
            raise ValueError(f'sr_ratio must be >= 1, got sr_ratio={sr_ratio}')
        if any(r < sr_ratio for r in resolution):
            raise ValueError(f'resolution must be >= sr_ratio={sr_ratio} per axis, got resolution={resolution}')
        dd = {'device': device, 'dtype': dtype}
        super().__init__(dim, num_heads=num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                         attn_drop=attn_drop, proj_drop=proj_drop, norm_layer=norm_layer, **dd)
        kv_resolution = (resolution[0] // sr_ratio, resolution[1] // sr_ratio)
        self._init_agent(dim, num_heads, agent_num, resolution, kv_resolution, 0, bias_size, dd)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The key / value map: ``x`` itself (``sr_ratio`` 1), else :class:`~zoo.layers.SpatialReductionAttentionCl`'s
        ``sr`` conv (maps below ``sr_ratio`` zero-padded up to it) and ``norm``; written out here (no linear SRA) so
        that TorchScript compiles only the branch this layer has."""
        if self.sr is None:
            return x
        else:
            r = self.sr_ratio
            pad_b, pad_r = max(0, r - x.shape[1]), max(0, r - x.shape[2])
            if pad_needed(pad_b, pad_r):
                x = F.pad(x, [0, 0, 0, pad_r, 0, pad_b])
            x = self.sr(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]``, any ``H, W >= 1``.

        Raises:
            ValueError: ``x`` is not ``[B, H, W, dim]``.
        """
        check_input_dtype(x, self.proj.weight)
        check_nonempty(x)
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f'x must have shape [B, H, W, {self.dim}], got {shape_str(x)}')
        B, H, W, C = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        q = self.q(x)  # [B, H, W, C]
        kv_map = self.reduce(x)
        Hk, Wk = kv_map.shape[1], kv_map.shape[2]
        k, v = self.kv(kv_map).reshape(B, Hk * Wk, 2 * C).chunk(2, dim=-1)
        agents = self.pool_agents(q)
        pos_bias, agent_bias = self.cached_agent_biases((H, W), (Hk, Wk), q.dtype)
        out = agent_attention(
            self._split(q), self._split(k), self._split(v), self._split(agents), pos_bias, agent_bias, self.scale,
            self.attn_drop.p if self.training else 0., self.fused_attn)
        out = out.transpose(1, 2).reshape(B, H, W, C)
        v_map = v.reshape(B, Hk, Wk, C)
        if Hk != H or Wk != W:
            v_map = F.interpolate(v_map.permute(0, 3, 1, 2), size=[H, W], mode='bilinear').permute(0, 2, 3, 1)
        out = out + self.dwc_cl(v_map)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, agent_num={self.agent_num}, '
                f'resolution={self.resolution}, sr_ratio={self.sr_ratio}')
