"""InLine attention: injective linear attention with a local residual (LeapLabTHU/InLine).

Paper: `Bridging the Divide: Reconsidering Softmax and Linear Attention` (Han et al., NeurIPS 2024).

Per head, with ``s = head_dim ** -0.5``, ``N`` tokens and kernel ``phi`` (identity in every released model)::

    out_i = phi(q_i) (sum_j phi(k_j)^T v_j) s / N + (1 - s phi(q_i) mean_j(phi(k_j))^T) mean_j(v_j)

i.e. the attention weights ``s q_i k_j^T / N + (1 - s q_i mean(k)^T) / N`` sum to one for every query without a
division by ``q_i sum(k)^T`` (the *injective* normalisation). The same result is computed here as

    out = phi(Q) M + mean(V),    M = s (phi(K)^T V / N - mean(phi(K))^T mean(V))     ([head_dim, head_dim] per head)

(one ``[N, d] x [d, d]`` product per head instead of the official two products and a broadcast). Plus the
**local residual**: a per-sample depthwise 3x3 kernel (no bias), predicted from the token mean of the layer input by
``residual`` = Conv1d(C, C, 1, groups=heads) -> GELU -> Conv1d(C, 9C, 1, groups=heads) (output channel ``o`` is the
kernel of channel ``o // 9`` at position ``(o % 9) // 3, o % 3``), applied to the V map (zero padding 1) and added
before ``proj``.

Host variants (parameter names are the official ones):

* ``qkv_layout='qkv'``: one ``qkv`` Linear (InLine-Swin, InLine-DeiT); ``'q_kv'``: ``q`` and ``kv`` Linears
  (InLine-PVT, whose InLine layers have spatial reduction 1; the official layer with ``sr_ratio > 1`` builds ``sr`` /
  ``norm`` but fails in its forward, so no reduction is offered here).
* ``num_prefix_tokens=1`` (InLine-DeiT): the input is ``[B, 1 + H * W, C]`` tokens; the class token takes part in
  the attention (``N`` counts it) and in the residual's token mean, but the local residual acts on the patch tokens
  only (the class token gets none).
* ``kernel_func`` (InLine-Swin's constructor option; 'identity' in all configs): 'identity', 'relu', 'leakyrelu',
  'exp' (``exp(0.2 x)``), applied to q and k.

Numerics: for float16 inputs (autocast or not) the attention core runs in float32: its token sums span up to 65536
tokens at a 1024 x 1024 stage-1 map, where a float16 ``K^T V`` overflows. bfloat16 inputs are computed in bfloat16,
as the official code does under autocast: bfloat16 has float32's range and its matmuls and means accumulate in
float32; only the centring of K is arranged so that it loses no digits (``_centred_kv_bf16``). The projections and
the local residual stay in the input dtype. There is no attention matrix, so ``attn_drop`` is
accepted for the shared factory interface and has nothing to drop (the official layer builds a Dropout it never
calls).

Speed (CPU): ``mean(V)`` enters as the bias of the per-sample conv, and the attention output is added to the local
residual in its per-head layout, one elementwise pass instead of a transpose copy and two adds; the depthwise conv
runs on the channels-last ``[1, B * C, H, W]`` image of V (oneDNN's NHWC depthwise kernel; its NCHW kernel with
``B * C`` groups is several times slower). A sequence-first layout (``[N, B, C]`` tokens, q, k, v as per-head
strided views, in-place ``Q M`` accumulation) was measured too: no faster for inference, 15-30% slower for a
training step (in-place accumulation into a view of the conv output), so it is not used.

The layer is a timm notrace (FX leaf) module and scripts with TorchScript (the autocast switch is Python-only: a
scripted layer under autocast runs its core in the autocast dtype).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ._checks import (
    check_bool,
    check_channels_last,
    check_drop,
    check_input_dtype,
    check_nonempty,
    check_num_heads,
    check_number,
    shape_str,
)
from ._precision import autocast_off, compute_dtype

__all__ = ['InLineAttention', 'inline_attention_core', 'dwconv3x3_per_sample', 'INLINE_KERNELS']

INLINE_KERNELS = ('identity', 'relu', 'leakyrelu', 'exp')
_LAYOUTS = ('qkv', 'q_kv')


def _phi(x: torch.Tensor, kernel_func: str) -> torch.Tensor:
    if kernel_func == 'identity':
        return x
    if kernel_func == 'relu':
        return F.relu(x)
    if kernel_func == 'leakyrelu':
        return F.leaky_relu(x)
    if kernel_func == 'exp':
        return torch.exp(x * 0.2)
    raise ValueError(f"kernel_func must be one of ('identity', 'relu', 'leakyrelu', 'exp'), got {kernel_func}")


def _core_parts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, s: float,
                kernel_func: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``Q M`` ``[B, h, N, d]`` and ``mean(V)`` ``[B, C]`` in the core dtype: the attention is their sum.

    The core dtype: float32 for float16 inputs (a float16 ``K^T V`` overflows at large token counts), else the input
    dtype (module notes).
    """
    B, N, C = q.shape
    d = C // num_heads
    dtype = compute_dtype(q.dtype, keep_bfloat16=True)
    q = _phi(q.to(dtype), kernel_func)
    k = _phi(k.to(dtype), kernel_func)
    v = v.to(dtype)
    q = q.reshape(B, N, num_heads, d).transpose(1, 2)  # [B, h, N, d]
    if dtype == torch.bfloat16:
        m, v_mean = _centred_kv_bf16(k, v, num_heads, s)
        return q @ m, v_mean
    # token means on the [B, N, C] layout (a contiguous reduction), then per head [B, h, 1, d]
    k_mean = k.mean(dim=1)
    v_mean = v.mean(dim=1)
    k = k.reshape(B, N, num_heads, d).transpose(1, 2)
    v = v.reshape(B, N, num_heads, d).transpose(1, 2)
    # M = s / N (K - mean K)^T V = s (K^T V / N - mean(K)^T mean(V)): the centring on the [d, d] product
    m = (k.transpose(-2, -1) @ v) * (s / N) - (k_mean.view(B, num_heads, d, 1) * s) @ v_mean.view(B, num_heads, 1, d)
    return q @ m, v_mean


def _centred_kv_bf16(k: torch.Tensor, v: torch.Tensor, num_heads: int,
                     s: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``M = s / N (K - mean K)^T V`` ``[B, h, d, d]`` and ``mean(V)`` ``[B, C]`` of bfloat16 ``[B, N, C]`` k and v,
    all in bfloat16, with bfloat16 matmuls.

    Centring on the ``[d, d]`` product (the float32 path) would subtract two nearly equal bfloat16 terms where keys and
    values have large means, and centring K by its bfloat16-rounded mean ``hi`` alone (the official code under
    autocast) shifts every key by that rounding, an error of ``mean(V)`` times it in M. So the keys are centred by
    ``hi``, and what ``hi`` missed, ``lo = mean(K - hi)`` (the mean of the centred keys, small), comes off the
    ``[d, d]`` product in float32: ``M = s / N (K - hi)^T V - s lo^T mean(V)``. The means are token sums over ``N``
    (they accumulate in float32 and round once; a bfloat16 ``mean`` on the CPU first copies its input to float32).
    """
    B, N, C = k.shape
    d = C // num_heads
    k = k - k.sum(dim=1, keepdim=True) / N  # centred by hi
    lo = k.sum(dim=1).float() / N
    v_mean = v.sum(dim=1) / N
    k = k.reshape(B, N, num_heads, d).transpose(1, 2)
    v = v.reshape(B, N, num_heads, d).transpose(1, 2)
    m = (k.transpose(-2, -1) @ v).float() * (s / N) - (lo.view(B, num_heads, d, 1) * s) @ v_mean.float().view(
        B, num_heads, 1, d)
    return m.to(v.dtype), v_mean


def _core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, s: float,
          kernel_func: str) -> torch.Tensor:
    """:func:`inline_attention_core` without the checks and the autocast switch."""
    B, N, C = q.shape
    qm, v_mean = _core_parts(q, k, v, num_heads, s, kernel_func)
    out = qm + v_mean.view(B, num_heads, 1, C // num_heads)
    return out.transpose(1, 2).reshape(B, N, C).to(q.dtype)


@torch.jit.unused
def _core_autocast_off(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, s: float,
                       kernel_func: str) -> torch.Tensor:
    with autocast_off(q.device):
        return _core(q, k, v, num_heads, s, kernel_func)


@torch.jit.unused
def _core_parts_autocast_off(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, s: float,
                             kernel_func: str) -> Tuple[torch.Tensor, torch.Tensor]:
    with autocast_off(q.device):
        return _core_parts(q, k, v, num_heads, s, kernel_func)


def inline_attention_core(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_heads: int,
        scale: Optional[float] = None,
        kernel_func: str = 'identity',
) -> torch.Tensor:
    """InLine attention (without the local residual) of ``[B, N, C]`` q, k, v whose channels are ``num_heads``
    heads of ``C // num_heads`` (head-major, as ``reshape(B, N, heads, head_dim)``).

    Args:
        q: queries ``[B, N, C]``.
        k: keys ``[B, N, C]``.
        v: values ``[B, N, C]``.
        num_heads: heads; must divide ``C``.
        scale: ``s``, default ``head_dim ** -0.5``.
        kernel_func: one of :data:`INLINE_KERNELS`, applied to q and k.

    Returns:
        ``[B, N, C]`` in the dtype of ``q``; float16 inputs are computed in float32, bfloat16 ones in bfloat16.

    Raises:
        ValueError: mismatched or empty shapes, ``num_heads`` not dividing ``C`` or an unknown ``kernel_func``.
    """
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f'q, k and v must all be [B, N, C], got q={shape_str(q)}, k={shape_str(k)}, '
                         f'v={shape_str(v)}')
    if kernel_func not in ['identity', 'relu', 'leakyrelu', 'exp']:
        raise ValueError(f"kernel_func must be one of ('identity', 'relu', 'leakyrelu', 'exp'), "
                         f"got kernel_func='{kernel_func}'")
    check_nonempty(q, 'q')
    C = q.shape[2]
    check_num_heads(C, num_heads)
    d = C // num_heads
    s = d ** -0.5 if scale is None else scale
    if torch.jit.is_scripting():
        return _core(q, k, v, num_heads, s, kernel_func)
    return _core_autocast_off(q, k, v, num_heads, s, kernel_func)


def dwconv3x3_per_sample(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depthwise 3x3 convolution (zero padding 1) with a different kernel (and bias) per sample, channels-last.

    Args:
        x: ``[B, H, W, C]``.
        weight: ``[B, C, 3, 3]`` (``weight[b, c]`` convolves channel ``c`` of sample ``b``; cross-correlation, as
            ``F.conv2d``).
        bias: optional ``[B, C]`` added to every position of sample ``b``, channel ``c``.

    Returns:
        ``[B, H, W, C]``.
    """
    B, H, W, C = x.shape
    if weight.dim() != 4 or list(weight.shape) != [B, C, 3, 3]:
        raise ValueError(f'weight must be [B, C, 3, 3] = [{B}, {C}, 3, 3], got {shape_str(weight)}')
    if bias is not None:
        if bias.dim() != 2 or list(bias.shape) != [B, C]:
            raise ValueError(f'bias must be [B, C] = [{B}, {C}], got {shape_str(bias)}')
        bias = bias.reshape(B * C).to(x.dtype)
    # one grouped conv over the B * C channels of a single image, in channels-last memory (oneDNN / cuDNN NHWC
    # depthwise kernels; the official NCHW layout is slower on CPU): [H, W, B * C] viewed as [1, B * C, H, W]
    y = x.permute(1, 2, 0, 3).reshape(1, H, W, B * C).permute(0, 3, 1, 2)
    y = F.conv2d(y, weight.reshape(B * C, 1, 3, 3).to(y.dtype), bias, padding=1, groups=B * C)
    return y.permute(0, 2, 3, 1).reshape(H, W, B, C).permute(2, 0, 1, 3)


@register_notrace_module  # shape-dependent control flow (input checks, layouts): an FX leaf
class InLineAttention(nn.Module):
    """InLine attention with the local residual (module docstring), on channels-last maps or prefixed tokens."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = True,
            qkv_layout: str = 'qkv',
            num_prefix_tokens: int = 0,
            kernel_func: str = 'identity',
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels.
            num_heads: heads; must divide ``dim`` (also the groups of the ``residual`` convs).
            qkv_bias: biases of ``qkv`` (or ``q`` / ``kv``).
            qkv_layout: 'qkv' (one Linear, Swin / DeiT hosts) or 'q_kv' (``q`` and ``kv``, PVT host).
            num_prefix_tokens: 0 (input ``[B, H, W, C]``) or the number of prefix tokens of ``[B, P + H * W, C]``
                token input (1: InLine-DeiT's class token).
            kernel_func: one of :data:`INLINE_KERNELS`.
            attn_drop: accepted for the factory interface; InLine has no attention matrix to drop from.
            proj_drop: dropout after ``proj``.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside the values above, naming it.
        """
        super().__init__()
        check_bool('qkv_bias', qkv_bias)
        dd = {'device': device, 'dtype': dtype}
        check_num_heads(dim, num_heads)
        if qkv_layout not in _LAYOUTS:
            raise ValueError(f'qkv_layout must be one of {_LAYOUTS}, got qkv_layout={qkv_layout!r}')
        if kernel_func not in INLINE_KERNELS:
            raise ValueError(f'kernel_func must be one of {INLINE_KERNELS}, got kernel_func={kernel_func!r}')
        check_number('num_prefix_tokens', num_prefix_tokens, 0, integer=True)
        check_drop('attn_drop', attn_drop)
        check_drop('proj_drop', proj_drop)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv_layout = qkv_layout
        self.num_prefix_tokens = num_prefix_tokens
        self.kernel_func = kernel_func
        if qkv_layout == 'qkv':
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.residual = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size=1, groups=num_heads, **dd),
            nn.GELU(),
            nn.Conv1d(dim, dim * 9, kernel_size=1, groups=num_heads, **dd),
        )
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, N, C]`` -> q, k, v ``[B, N, C]`` (views of one or two Linear outputs)."""
        B, N, C = x.shape
        if hasattr(self, 'qkv'):
            q, k, v = self.qkv(x).view(B, N, 3, C).unbind(2)
        else:
            q = self.q(x)
            k, v = self.kv(x).view(B, N, 2, C).unbind(2)
        return q, k, v

    def _attend(self, tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """``[B, P + H * W, C]`` tokens -> attention + local residual, projected, ``[B, P + H * W, C]``."""
        B, N, C = tokens.shape
        P = self.num_prefix_tokens
        q, k, v = self._qkv(tokens)
        # the token mean as sum / N: the same values in float32, and no float32 copy of bfloat16 tokens (as a CPU mean)
        kernel = self.residual((tokens.sum(dim=1) / N).unsqueeze(-1)).view(B, C, 3, 3)
        if torch.jit.is_scripting():
            qm, v_mean = _core_parts(q, k, v, self.num_heads, self.scale, self.kernel_func)
        else:
            qm, v_mean = _core_parts_autocast_off(q, k, v, self.num_heads, self.scale, self.kernel_func)
        # local residual + mean(V) (the conv's bias), then + Q M read in its [B, h, N, d] layout: one elementwise pass.
        # The conv output is [H, W, B, C] in memory (the channels-last [1, B * C, H, W] image), so the sum is formed
        # in that sequence-first order, [N, B, C] rows, and proj reads those rows: no transpose copy. The result is
        # returned as a [B, N, C] view of [N, B, C] memory (the block's residual add reads it as it is).
        local = dwconv3x3_per_sample(v[:, P:].reshape(B, H, W, C), kernel, v_mean)  # [B, H, W, C] view
        hd = (self.num_heads, self.head_dim)
        qm = qm.permute(2, 0, 1, 3).to(local.dtype)  # [N, B, h, d] view (a cast for 16-bit inputs)
        out = local.permute(1, 2, 0, 3).reshape(H * W, B, hd[0], hd[1]) + qm[P:]
        if P > 0:  # prefix tokens (class token): attention only, no local residual
            prefix = qm[:P] + v_mean.to(qm.dtype).view(1, B, hd[0], hd[1])
            out = torch.cat([prefix, out], dim=0)
        out = self.proj(out.reshape(N * B, C)).view(N, B, C).transpose(0, 1)
        return self.proj_drop(out)

    def forward(self, x: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]`` (``num_prefix_tokens=0``), or ``[B, P + H * W, dim]`` tokens of an
        ``size = (H, W)`` grid -> the same shape (``num_prefix_tokens=P > 0``).

        Raises:
            ValueError: another shape or an empty one, or ``size`` missing / not matching the tokens.
            TypeError: ``x`` not floating point, or of another dtype than the parameters outside autocast.
        """
        P = self.num_prefix_tokens
        if P > 0:
            if x.dim() != 3 or x.shape[-1] != self.dim:
                raise ValueError(f'x must have shape [B, {P} + H * W, {self.dim}], got {shape_str(x)}')
            if size is None:
                raise ValueError(f'size=(H, W) of the token grid is required with num_prefix_tokens={P}, '
                                 f'got size=None')
            if len(size) != 2:
                raise ValueError(f'size must be (H, W) of the token grid, got {len(size)} values')
            H, W = size[0], size[1]  # no int(): it would fix a symbolic size while torch.export traces
            if x.shape[1] != P + H * W:
                raise ValueError(f'x has {x.shape[1]} tokens, expected {P} + {H} * {W} for size=({H}, {W})')
            tokens = x
        else:
            check_channels_last(x, self.dim)
            H, W = x.shape[1], x.shape[2]
            tokens = x.reshape(x.shape[0], H * W, self.dim)
        check_nonempty(x)
        check_input_dtype(x, self.proj.weight)
        out = self._attend(tokens, H, W)
        return out if P > 0 else out.reshape(x.shape)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, qkv_layout={self.qkv_layout!r}, '
                f'num_prefix_tokens={self.num_prefix_tokens}, kernel_func={self.kernel_func!r}')
