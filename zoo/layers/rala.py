"""Rank-augmented linear attention (RALA) and RAVLT's softmax attention, with their 2-D RoPE, LePE and output gate.

From `Breaking the Low-Rank Dilemma of Linear Attention` (RAVLT, https://arxiv.org/abs/2411.07635); the official
code is ``classfication/RALA.py`` of https://github.com/qhfan/RALA (``GateLinearAttentionNoSilu`` and
``VanillaSelfAttention``). Both attentions work on NCHW maps of any size:

* ``qkvo`` (1x1 conv ``C -> 4C``): the first ``3C`` channels are q, k, v as ``(3, heads, head_dim)``, the last ``C``
  the output gate ``o`` (no activation). ``lepe`` is a depthwise 5x5 conv on v; ``proj`` a 1x1 conv. The output is
  ``proj((attn + lepe(v)) * o)``.
* RALA (``mode='rala'``), per head with ``N`` tokens: ``q, k = elu + 1``; token weights
  ``a = softmax_n(s * mean_n(q) . k_n)`` (``s = head_dim ** -0.5``) scale the keys, ``k_n <- N a_n k_n``; then
  ``out = RoPE(q) (RoPE(k)^T v / N) / (q . mean_n(k) + 1e-6)``: the rotation is on the numerator only.
* softmax (``mode='softmax'``): ``softmax(s RoPE(q) RoPE(k)^T) v`` (SDPA; with ``fused_attn = False`` the explicit
  matmuls of the official code, which fvcore counts).

RoPE (:class:`Rope2d`): per head, the first ``head_dim / 2`` channels rotate by the row index and the last by the
column index, adjacent channel pairs ``(2i, 2i + 1)`` as a complex number, with angles
``1 / 10000 ** linspace(0, 1, head_dim / 4)`` each repeated twice. The angles are the persistent buffer ``angle``
(official checkpoints hold it as ``layers.N.RoPE.angle``).

Numerics: the RALA core is computed in float32 for 16-bit inputs (autocast or not), because its token sums span the
whole map (65 536 tokens at 1024 x 1024 px, stride 4); the result is cast back before the gate and ``proj``.
The key reweighting is done without the official ``N`` and ``N ** -0.5`` factors, which cancel exactly:
``RoPE(k)^T v / N`` with ``k = N a k`` is ``sum_n a_n RoPE(k_n) v_n^T`` and ``mean_n(k) = sum_n a_n k_n``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, use_fused_attn

from ._checks import check_input_dtype, check_nonempty, check_num_heads, shape_str
from ._precision import autocast_off, compute_dtype
from .pointwise import PointwiseConv2d
from .pos_conv import DwConv2d

__all__ = ['Rope2d', 'apply_rope_2d', 'elu_plus_one', 'rala_core', 'RalaAttention2d']


_MODES = ('rala', 'softmax')


@register_notrace_module  # the tables depend on the map size: an FX leaf
class Rope2d(nn.Module):
    """2-D rotary position embedding of RAVLT: ``cos`` / ``sin`` tables for an ``(H, W)`` map."""

    def __init__(self, head_dim: int, device=None, dtype=None):
        """
        Args:
            head_dim: channels per head; a multiple of 4 (half for rows, half for columns, in pairs).
            device: device of the ``angle`` buffer.
            dtype: dtype of the ``angle`` buffer.

        Raises:
            ValueError: ``head_dim`` not a positive multiple of 4.
        """
        super().__init__()
        if head_dim < 4 or head_dim % 4:
            raise ValueError(f'head_dim must be a positive multiple of 4, got head_dim={head_dim}')
        self.head_dim = head_dim
        angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 4, dtype=torch.float32))
        angle = angle.unsqueeze(-1).repeat(1, 2).flatten()
        self.register_buffer('angle', angle.to(device=device, dtype=dtype or torch.get_default_dtype()))
        # both channels of a pair share an angle (as computed): the rotation is one complex product per pair
        self.paired = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        angle = state_dict.get(prefix + 'angle')
        if isinstance(angle, torch.Tensor) and angle.device.type != 'meta' and angle.shape == self.angle.shape:
            self.paired = bool(torch.equal(angle[0::2], angle[1::2]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, size: Tuple[int, int]) -> List[torch.Tensor]:
        """``(cos, sin)`` tables, each ``[H*W, head_dim]`` in the buffer's dtype, and with paired float32 / float64
        angles a third, ``[H*W, head_dim / 2]`` complex ``exp(i angle)`` per channel pair.

        ``sin`` carries the rotation's signs (``-sin`` on even channels), so :func:`apply_rope_2d` is
        ``x * cos + swap_pairs(x) * sin``; the official ``theta_shift`` gives the same values.

        Raises:
            ValueError: ``H`` or ``W`` below 1.
        """
        H, W = size
        if H < 1 or W < 1:
            raise ValueError(f'size must be (H, W) with H, W >= 1, got size=({H}, {W})')
        index_h = torch.arange(H, device=self.angle.device).to(self.angle)
        index_w = torch.arange(W, device=self.angle.device).to(self.angle)
        ang_h = (index_h[:, None] * self.angle[None, :]).unsqueeze(1).expand(H, W, -1)
        ang_w = (index_w[:, None] * self.angle[None, :]).unsqueeze(0).expand(H, W, -1)
        ang = torch.cat([ang_h, ang_w], -1).flatten(0, 1)
        sign = torch.tensor([-1., 1.], device=ang.device, dtype=ang.dtype).repeat(self.head_dim // 2)
        cos, sin = torch.cos(ang), torch.sin(ang) * sign
        if self.paired and ang.dtype in (torch.float32, torch.float64):
            return [cos, sin, torch.complex(cos[:, 0::2], sin[:, 1::2])]
        return [cos, sin]

    def extra_repr(self) -> str:
        return f'head_dim={self.head_dim}'


def apply_rope_2d(x: torch.Tensor, rope: List[torch.Tensor]) -> torch.Tensor:
    """Rotate ``x [..., N, head_dim]`` by the tables of :class:`Rope2d`: one complex product per channel pair when
    the complex table is there and matches ``x`` (float32 / float64), else ``x * cos + swap_pairs(x) * sin``."""
    cos, sin = rope[0], rope[1]
    if len(rope) > 2 and cos.dtype == x.dtype:
        out = torch.view_as_complex(x.contiguous().unflatten(-1, (-1, 2))) * rope[2]
        return torch.view_as_real(out).flatten(-2)
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return x * cos + swapped * sin


def _rope_to(rope: List[torch.Tensor], dtype: torch.dtype) -> List[torch.Tensor]:
    """The tables in ``dtype`` (the complex one only where it stays exact: same dtype)."""
    if rope[0].dtype == dtype:
        return list(rope)
    return [rope[0].to(dtype), rope[1].to(dtype)]


def _elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    # two new tensors instead of four: on large maps the fresh allocations cost more than the arithmetic
    y = torch.clamp_min(x, 0.)
    return y.add_(torch.clamp_max(x, 0.).exp_())


class _EluPlusOne(torch.autograd.Function):
    """``elu(x) + 1`` with its gradient from the output alone: ``y = x + 1 > 1`` where ``x > 0`` (slope 1) and
    ``y = exp(x) <= 1`` elsewhere (slope ``y``), so ``dy/dx = min(y, 1)``. One pass, against the four that autograd
    makes of the clamps and the exp (and their saved masks)."""

    generate_vmap_rule = True  # torch.func transforms (per-sample gradients) see through it

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _elu_plus_one(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        y, = ctx.saved_tensors
        return y.clamp_max(1.).mul_(grad)


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1`` as ``max(x, 0) + exp(min(x, 0))``: the same values to rounding (below about ``x = -17``, where
    ``expm1(x) + 1`` rounds to 0 in float32, this keeps ``exp(x)``), faster on CPU than ``F.elu(x) + 1`` at every map
    size of RAVLT (its ``expm1``) and than the four-op form on large maps (two fresh tensors instead of four); with a
    one-pass backward (:class:`_EluPlusOne`) where a gradient is needed."""
    if torch.jit.is_scripting():
        return _elu_plus_one(x)
    if x.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_exporting():
        return _EluPlusOne.apply(x)
    return _elu_plus_one(x)


def _rala_features(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rope: List[torch.Tensor],
        scale: float,
) -> torch.Tensor:
    """RALA on ``[B, heads, N, head_dim]`` q, k after the feature map ``elu + 1`` (all in one dtype)."""
    q_mean = q.mean(dim=-2, keepdim=True)
    weight = torch.softmax(scale * (q_mean @ k.transpose(-1, -2)), dim=-1).transpose(-1, -2)  # [B, h, N, 1]
    k = k * weight
    z = 1.0 / (q @ k.sum(dim=-2, keepdim=True).transpose(-1, -2) + 1e-6)
    kv = apply_rope_2d(k, rope).transpose(-1, -2) @ v
    return (apply_rope_2d(q, rope) @ kv) * z


def rala_core(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rope: List[torch.Tensor],
        scale: float,
) -> torch.Tensor:
    """Rank-augmented linear attention of ``[B, heads, N, head_dim]`` q, k, v (before the ELU feature map).

    Returns ``[B, heads, N, head_dim]`` in the dtype of ``q``; 16-bit inputs are computed in float32.

    Raises:
        ValueError: q, k, v not all ``[B, heads, N, head_dim]`` (non-empty), or the tables not ``[N, head_dim]``.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f'q, k and v must all be [B, heads, N, head_dim], got q={shape_str(q)}, k={shape_str(k)}, '
                         f'v={shape_str(v)}')
    check_nonempty(q, 'q')
    if rope[0].dim() != 2 or rope[0].shape[0] != q.shape[2] or rope[0].shape[1] != q.shape[3]:
        raise ValueError(f'rope tables must be [{q.shape[2]}, {q.shape[3]}] (tokens, head_dim), got '
                         f'{shape_str(rope[0])}')
    out_dtype = q.dtype
    dtype = compute_dtype(q.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    rope = _rope_to(rope, dtype)
    if torch.jit.is_scripting():  # TorchScript ignores autocast(enabled=False)
        return _rala_features(elu_plus_one(q), elu_plus_one(k), v, rope, scale).to(out_dtype)
    with autocast_off(q.device):
        out = _rala_features(elu_plus_one(q), elu_plus_one(k), v, rope, scale)
    return out.to(out_dtype)


@register_notrace_module  # shape-dependent control flow (input checks): an FX leaf
class RalaAttention2d(nn.Module):
    """RAVLT's attention (RALA or softmax) with RoPE, LePE and the output gate, on NCHW maps."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mode: str = 'rala',
            lepe_kernel: int = 5,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the input and output maps.
            num_heads: heads; must divide ``dim`` into a head width that is a multiple of 4 (RoPE).
            mode: 'rala' (rank-augmented linear attention, RAVLT stages 1-2) or 'softmax' (stages 3-4).
            lepe_kernel: kernel of the depthwise LePE conv on v (odd).
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: ``num_heads`` does not divide ``dim``, a head width not a multiple of 4, or an unknown
                ``mode``.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_num_heads(dim, num_heads)
        if mode not in _MODES:
            raise ValueError(f'mode must be one of {_MODES}, got mode={mode!r}')
        head_dim = dim // num_heads
        if head_dim % 4:
            raise ValueError(f'dim / num_heads must be a multiple of 4 (2-D RoPE), got dim={dim}, '
                             f'num_heads={num_heads}')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.mode = mode
        self.scale = head_dim ** -0.5
        # softmax mode: SDPA, or the explicit softmax(q k^T) v of the official code (what fvcore counts)
        self.fused_attn = use_fused_attn()
        self.qkvo = PointwiseConv2d(dim, dim * 4, **dd)
        self.lepe = DwConv2d(dim, lepe_kernel, **dd)
        self.proj = PointwiseConv2d(dim, dim, **dd)

    def forward(
            self, x: torch.Tensor, rope: List[torch.Tensor], out_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend over the whole map.

        Args:
            x: ``[B, dim, H, W]``.
            rope: the tables of :class:`Rope2d` for ``(H, W)`` (``cos`` and ``sin`` ``[H*W, head_dim]``).
            out_scale: ``[dim]`` per-channel factor of the output (the block's layer scale, folded into ``proj``).

        Returns:
            ``[B, dim, H, W]``.

        Raises:
            ValueError: ``x`` of another shape or empty, tables not for the map's token count, or a bad ``out_scale``.
            TypeError: ``x`` not floating point, or of another dtype than the parameters outside autocast.
        """
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f'x must have shape [B, {self.dim}, H, W], got {shape_str(x)}')
        check_nonempty(x)
        check_input_dtype(x, self.proj.weight)
        B, C, H, W = x.shape
        N = H * W
        if rope[0].dim() != 2 or rope[0].shape[0] != N or rope[0].shape[1] != self.head_dim:
            raise ValueError(f'rope tables must be [{N}, {self.head_dim}] for a {H}x{W} map, got '
                             f'{shape_str(rope[0])}')
        # tokens-major view [B, N, 4C]: free for a channels-last map (as RAVLT runs), one copy else; one split (not
        # slices: the backward of each slice would zero-fill a [B, N, 4C] gradient and add them)
        tokens = self.qkvo(x).permute(0, 2, 3, 1).reshape(B, N, 4 * C)
        qk, v, gate = tokens.split([2 * C, C, C], dim=-1)
        lepe = self.lepe(v.reshape(B, H, W, C).permute(0, 3, 1, 2))
        if self.mode == 'rala':
            if torch.jit.is_scripting():  # TorchScript ignores autocast(enabled=False)
                out = self._rala(qk, v, rope)
            else:
                with autocast_off(x.device):
                    out = self._rala(qk, v, rope)
        else:
            q, k, v = self._heads(qk, v)
            rope = _rope_to(rope, q.dtype)
            q = apply_rope_2d(q, rope)
            k = apply_rope_2d(k, rope)
            if self.fused_attn:
                out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            else:
                out = torch.softmax(self.scale * q @ k.transpose(-1, -2), dim=-1) @ v
        # back to a channels-last NCHW map (a view of the [B, N, C] tokens)
        out = out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
        gate = gate.reshape(B, H, W, C).permute(0, 3, 1, 2)
        return self.proj((out + lepe) * gate, out_scale)

    def _rala(self, qk: torch.Tensor, v: torch.Tensor, rope: List[torch.Tensor]) -> torch.Tensor:
        """RALA of ``[B, N, 2C]`` q|k and ``[B, N, C]`` v tokens -> ``[B, heads, N, head_dim]`` in their dtype (16-bit:
        computed in float32)."""
        in_dtype, dtype = v.dtype, compute_dtype(v.dtype)
        q, k, v = self._heads(elu_plus_one(qk.to(dtype)), v.to(dtype))  # the feature map on q and k in one pass
        return _rala_features(q, k, v, _rope_to(rope, dtype), self.scale).to(in_dtype)

    def _heads(self, qk: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, N, 2C]`` q|k and ``[B, N, C]`` v tokens -> q, k, v ``[B, heads, N, head_dim]`` (views)."""
        B, N, C = v.shape
        q, k = qk.reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, mode={self.mode!r}'
