"""A Swin-layout backbone whose attention is chosen per block by an attention-type string (Agent-Swin, InLine-Swin).

The Agent-Swin and InLine-Swin models of LeapLabTHU (``agent_transformer/models/agent_swin.py``,
``InLine/models/inline_swin.py``) are Swin-T/S/B with a different token mixer in some blocks. This module holds the
shared backbone; each family supplies its own attention layer through a factory and renames its official keys in its
own ``checkpoint_filter_fn``.

Layout (official Swin): ``patch_embed`` (conv ``patch_size`` + LN) -> 4 stages (Swin patch merging before stages
1-3) of pre-norm blocks ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` (:class:`~zoo.layers.PreNormBlockCl`, timm
``Mlp``) -> ``norm`` -> average pool -> ``head.fc``. Features stay channels-last ``[B, H, W, C]``.

Attention-type string (the official ``MODEL.AGENT.ATTN_TYPE`` / ``ATTN_TYPE``): one letter per stage, then an
optional integer used by 'M' stages:

* ``'B'`` or ``'S'``: plain Swin (shifted-)window attention (:class:`SwinWindowAttentionCl`: ``qkv``,
  ``rel_pos.relative_position_bias_table``, ``proj``) with window ``max(7, window_size // 8)`` and shift
  ``window // 2`` on odd block indices;
* the family letter (``attn_letter``, e.g. ``'A'`` agent, ``'I'`` InLine): the family layer from ``attn_layer``, with
  window ``window_size`` and the same shift rule;
* ``'M'``: a mixed stage, the first ``n`` blocks use the family layer and the rest Swin windows, ``n`` being the
  integer at the end of the string (``'AAMB2'``: stage 2 has 2 family blocks then Swin blocks).

As in the official block, a window that covers the stage (``min(stage resolution) <= window``, resolution at
``img_size``) is clamped to the stage and gets no shift: with the official ``window_size`` 56 / 72 / 96 every
family block is **global** over its stage. A family block whose window is smaller than its stage at ``img_size``
runs on cyclically shifted windows (``zoo.layers.window_partition``; the window map is what the family layer sees).

The ``attn_layer`` factory interface (shared with ``_deit_like`` and H3's ``_pvt_like``)::

    attn_layer(stage=s, index=i, dim=C, num_heads=h, resolution=(H, W),
               attn_drop=p_attn, proj_drop=p_proj, device=device, dtype=dtype) -> nn.Module

called once per family block (``index`` = block index inside stage ``s``). ``resolution`` is the map the layer
attends over at the model's ``img_size``: the whole stage for a global block, ``(window, window)`` for a windowed
one; layers whose parameters depend on it (agent biases) size them from it. The module maps channels-last
``[B, H, W, C] -> [B, H, W, C]`` for any ``H, W`` (a global layer sees the whole stage map at the input's size,
which differs from ``resolution`` for other input sizes). Factories should accept ``**kwargs`` so that keywords can
be added later.

Any input size: the stem and patch merging pad to their stride; Swin window blocks shrink a window that exceeds
the map (reading the corner of the bias table, no shift on that axis), pad maps the window does not divide and
mask the padded keys, so a real token's output never depends on padding (at sizes the window divides this is the
official computation).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import calculate_drop_path_rates, register_notrace_module, to_2tuple, use_fused_attn
from timm.models import checkpoint_seq

from zoo.layers import PatchEmbedCl, PatchMergingCl, PreNormBlockCl, RelPosBias
from zoo.layers._checks import check_bool, check_channels_last, check_num_heads, check_number
from zoo.layers.partition import is_exporting, padded_size_, window_partition_, window_reverse_

from ._helpers import StagedModelMixin, init_weights

__all__ = ['SwinLikeCfg', 'SwinLike', 'SwinLikeStage', 'SwinWindowAttentionCl', 'BlockPlan', 'plan_blocks',
           'WINDOW_LETTERS']

WINDOW_LETTERS = ('B', 'S')
AttnFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class BlockPlan:
    """What one block attends with: ``kind`` 'window' (Swin W-MSA) or 'family'; its window and shift at
    ``img_size``; ``global_`` when the window covers the stage (then ``window`` is the stage resolution)."""
    kind: str
    window: Tuple[int, int]
    shift: int
    global_: bool


def _parse_attn_type(attn_type: str, num_stages: int, attn_letter: str) -> Tuple[List[str], int]:
    """Per-stage letters and the 'M' count of an official attention-type string."""
    letters = list(attn_type[:num_stages])
    tail = attn_type[num_stages:]
    allowed = (attn_letter, 'M') + WINDOW_LETTERS
    if len(letters) != num_stages or any(c not in allowed for c in letters):
        raise ValueError(f'attn_type must start with one of {allowed} per stage ({num_stages}), '
                         f'got attn_type={attn_type!r}')
    if 'M' in letters:
        if not re.fullmatch(r'\d+', tail):
            raise ValueError(f"attn_type with an 'M' stage must end with the number of family blocks of that stage, "
                             f'got attn_type={attn_type!r}')
        return letters, int(tail)
    if tail:
        raise ValueError(f"attn_type has trailing characters {tail!r} but no 'M' stage: attn_type={attn_type!r}")
    return letters, 0


def plan_blocks(
        attn_type: str,
        depths: Sequence[int],
        window_size: int,
        resolutions: Sequence[Tuple[int, int]],
        attn_letter: str,
) -> List[List[BlockPlan]]:
    """The official block layout: per stage, per block, the attention kind, window and shift.

    Args:
        attn_type: official attention-type string (``'AAAB'``, ``'AAMB2'``, ``'IIIS'`` ...).
        depths: blocks per stage.
        window_size: the official ``WINDOW_SIZE`` (family blocks); Swin blocks use ``max(7, window_size // 8)``.
        resolutions: stage map sizes at ``img_size``.
        attn_letter: the family's letter.

    Raises:
        ValueError: a malformed ``attn_type``.
    """
    letters, mixed = _parse_attn_type(attn_type, len(depths), attn_letter)
    plans = []
    for letter, depth, res in zip(letters, depths, resolutions):
        stage = []
        for i in range(depth):
            family = letter == attn_letter or (letter == 'M' and i < mixed)
            win = window_size if family else max(7, window_size // 8)
            shift = 0 if i % 2 == 0 else win // 2
            covers = min(res) <= win
            if covers:
                # official: the window shrinks to the stage (min side) and the shift is dropped; here the block
                # then attends over the whole (possibly non-square) stage map
                stage.append(BlockPlan('family' if family else 'window',
                                       tuple(res) if family else (min(res), min(res)), 0, True))
            else:
                stage.append(BlockPlan('family' if family else 'window', (win, win), shift, False))
        plans.append(stage)
    return plans


@dataclass(frozen=True)
class SwinLikeCfg:
    """Architecture of a Swin-layout variant.

    Attributes:
        embed_dim: channels of stage 0 (doubled at every stage).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: the official ``WINDOW_SIZE`` (56 at 224 px, 72 at 288, 96 at 384).
        attn_type: official attention-type string (see the module docstring).
        mlp_ratio: MLP hidden width over block width.
        patch_size: stride of the patch stem.
        img_size: input size the stage resolutions (global blocks, bias sizes) are computed for.
        family_kwargs: hashable ``((key, value), ...)`` pairs a family passes to its factory (agent counts ...).
    """
    embed_dim: int = 96
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 56
    attn_type: str = 'BBBB'
    mlp_ratio: float = 4.
    patch_size: int = 4
    img_size: Union[int, Tuple[int, int]] = 224
    family_kwargs: Tuple[Tuple[str, object], ...] = ()

    def __post_init__(self):
        depths, heads = tuple(self.depths), tuple(self.num_heads)
        if not depths or any(d < 1 for d in depths):
            raise ValueError(f'depths must be a non-empty sequence of ints >= 1, got depths={self.depths}')
        if len(heads) != len(depths) or any(h < 1 for h in heads):
            raise ValueError(f'num_heads must give one int >= 1 per stage ({len(depths)}), got num_heads={heads}')
        if self.embed_dim < 1:
            raise ValueError(f'embed_dim must be >= 1, got embed_dim={self.embed_dim}')
        dims = [self.embed_dim * 2 ** i for i in range(len(depths))]
        if any(d % h for d, h in zip(dims, heads)):
            raise ValueError(f'num_heads must divide the stage widths {dims}, got num_heads={heads}')
        if self.window_size < 1:
            raise ValueError(f'window_size must be >= 1, got window_size={self.window_size}')
        check_number('mlp_ratio', self.mlp_ratio, 0, low_open=True)
        if self.patch_size < 1:
            raise ValueError(f'patch_size must be >= 1, got patch_size={self.patch_size}')
        size = tuple(to_2tuple(self.img_size))
        if len(size) != 2 or any(int(s) < 1 for s in size):
            raise ValueError(f'img_size must be an int or (h, w) pair of ints >= 1, got img_size={self.img_size!r}')

    @property
    def dims(self) -> Tuple[int, ...]:
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

    def resolutions(self) -> List[Tuple[int, int]]:
        """Stage map sizes at ``img_size`` (ceil division, as the padding stem and merging)."""
        h, w = (int(s) for s in to_2tuple(self.img_size))
        h, w = -(-h // self.patch_size), -(-w // self.patch_size)
        out = []
        for _ in self.depths:
            out.append((h, w))
            h, w = -(-h // 2), -(-w // 2)
        return out


def _window_mask(H: int, W: int, win: Tuple[int, int], shift: Tuple[int, int], device: torch.device,
                 dtype: torch.dtype) -> Optional[torch.Tensor]:
    """``[nW, 1, N, N]`` additive mask of an ``H x W`` map in ``win`` windows shifted by ``shift``: Swin's shifted
    regions (0 within one, -100 across; :func:`zoo.layers.window_attn_mask`) plus -inf on padded keys; None when
    neither applies. ``shift`` is 0 on an axis that holds one window (``SwinWindowAttentionCl._geometry``), as
    :func:`_rolled_axis` decides it. TorchScript compiles it."""
    Hp, Wp = padded_size_((H, W), win)
    if shift[0] == 0 and shift[1] == 0 and Hp == H and Wp == W:
        return None
    _, _, region_h, real_h = _rolled_axis(H, Hp, win[0], shift[0], device)
    _, _, region_w, real_w = _rolled_axis(W, Wp, win[1], shift[1], device)
    mask = _rolled_window_mask(region_h, region_w, real_h, real_w, win, dtype)
    # without a shift every window lies in one region: only the padded keys are masked, alike for every query
    return mask if shift[0] != 0 or shift[1] != 0 else mask[:, :, :1]


def _rolled_axis(size: int, padded: int, window: int, shift: int,
                 device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One axis of a padded, cyclically shifted window partition, as index tensors (for a symbolic ``size``).

    The shift applies only when the padded axis holds more than one window (eager: ``size > window``); here that
    choice is tensor arithmetic, so an exported graph makes it per input size instead of once while tracing.

    Returns:
        ``src``: ``[padded]``, the padded position that rolled position ``i`` holds; ``back``: ``[padded]``, the rolled
        position of padded position ``j`` (the inverse permutation); ``region``: ``[padded]``, Swin's shifted-window
        region of each rolled position (0, 1, 2 as in ``_window_mask``); ``real``: ``[padded]``, whether rolled
        position ``i`` holds a real (unpadded) token.
    """
    ramp = torch.arange(padded, device=device)
    s = (ramp >= window).any().long() * shift  # 0-d: `shift` if padded > window (<=> size > window), else 0
    src = ramp + s
    src = torch.where(src >= padded, src - padded, src)  # (ramp + s) mod padded (ONNX has no Mod by a symbolic size)
    back = ramp - s
    back = torch.where(back < 0, back + padded, back)
    region = (ramp >= padded - window).long() + (ramp >= padded - s).long()
    return src, back, region, src < size


def _rolled_window_mask(region_h: torch.Tensor, region_w: torch.Tensor, real_h: torch.Tensor, real_w: torch.Tensor,
                        window: Tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """``[nW, 1, N, N]`` additive mask of ``_window_mask`` from per-axis regions and real-token flags (all zero
    where eager has no mask: without a shift every window lies in one region, without padding every key is real)."""
    region = (region_h[:, None] * 3 + region_w[None, :])[None, :, :, None]  # [1, Hp, Wp, 1]
    real = (real_h[:, None] & real_w[None, :])[None, :, :, None]
    region = window_partition_(region, window, (0, 0)).flatten(1)  # [nW, N]
    real = window_partition_(real, window, (0, 0)).flatten(1)
    zero = torch.zeros((), dtype=dtype, device=region.device)
    across = torch.where(region[:, :, None] != region[:, None, :], zero - 100., zero)  # [nW, N, N]
    padded_key = torch.where(real, zero, zero - float('inf'))[:, None, :]  # [nW, 1, N]
    return (across + padded_key)[:, None]


@register_notrace_module  # shape-dependent control flow (window geometry, masks): an FX leaf
class SwinWindowAttentionCl(nn.Module):
    """Swin (shifted-)window multi-head self-attention with Swin's relative position bias, channels-last.

    Parameters ``qkv``, ``rel_pos.relative_position_bias_table``, ``proj`` (official Swin: ``qkv``,
    ``relative_position_bias_table``, ``proj``). See the module docstring for other input sizes.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Union[int, Tuple[int, int]] = 7,
            shift_size: int = 0,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels.
            num_heads: heads; must divide ``dim``.
            window_size: ``(wh, ww)`` tokens per window (the bias table's window).
            shift_size: cyclic shift of the windows (0: W-MSA, else SW-MSA); must be below the window.
            qkv_bias: bias of ``qkv``.
            qk_scale: logit scale, default ``head_dim ** -0.5``.
            attn_drop: attention-probability dropout.
            proj_drop: dropout after ``proj``.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside its valid values, naming it.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_num_heads(dim, num_heads)
        check_bool('qkv_bias', qkv_bias)
        window = tuple(int(w) for w in to_2tuple(window_size))
        if len(window) != 2 or any(w < 1 for w in window):
            raise ValueError(f'window_size must be an int or (h, w) pair of ints >= 1, got window_size={window_size}')
        if not 0 <= shift_size < min(window):
            raise ValueError(f'shift_size must be in [0, {min(window)}), got shift_size={shift_size}')
        if qk_scale is not None and not qk_scale > 0:
            raise ValueError(f'qk_scale must be a positive float or None, got qk_scale={qk_scale}')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.window_size = window
        self.shift_size = shift_size
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.rel_pos = RelPosBias(window, num_heads, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self._mask_cache: Dict[Tuple, Optional[torch.Tensor]] = {}

    def _geometry(self, H: int, W: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """Window and shift used on an ``H x W`` map."""
        wh, ww = self.window_size
        win = (min(wh, H), min(ww, W))
        # official: a window covering the map gets no shift; per axis here
        shift = (self.shift_size if H > wh else 0, self.shift_size if W > ww else 0)
        return win, shift

    def _mask(self, H: int, W: int, win: Tuple[int, int], shift: Tuple[int, int], device: torch.device,
              dtype: torch.dtype) -> Optional[torch.Tensor]:
        """``[nW, 1, N, N]`` additive mask (shifted regions -100, padded keys -inf), or None; cached in eager."""
        if torch.jit.is_scripting():  # no cache in TorchScript: the mask is made per call
            return _window_mask(H, W, win, shift, device, dtype)
        return self._cached_mask(H, W, win, shift, device, dtype)

    @torch.jit.unused
    def _cached_mask(self, H: int, W: int, win: Tuple[int, int], shift: Tuple[int, int], device: torch.device,
                     dtype: torch.dtype) -> Optional[torch.Tensor]:
        key = (H, W, str(device), dtype)
        if key in self._mask_cache:
            return self._mask_cache[key]
        with torch.inference_mode(False), torch.no_grad():
            mask = _window_mask(H, W, win, shift, device, dtype)
        if device.type != 'meta':
            self._mask_cache[key] = mask
        return mask

    def _bias(self, win: Tuple[int, int]) -> torch.Tensor:
        """``[1, heads, N, N]`` bias of a ``win`` window (the table's corner when smaller than the window)."""
        bias = self.rel_pos.get_bias()
        if win == self.window_size:
            return bias
        wh, ww = self.window_size
        bias = bias.view(1, self.num_heads, wh, ww, wh, ww)[:, :, :win[0], :win[1], :win[0], :win[1]]
        return bias.reshape(1, self.num_heads, win[0] * win[1], win[0] * win[1])

    def _attend(self, windows: torch.Tensor, bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention inside ``[B * nW, N, C]`` windows with the ``[1, heads, N, N]`` bias and an optional
        ``[nW, 1, N, N]`` mask; returns ``[B * nW, N, C]`` before ``proj``."""
        BW, n, C = windows.shape
        qkv = self.qkv(windows).view(-1, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = bias.to(q.dtype)
        if mask is not None:
            bias = (bias + mask.to(q.dtype)).unsqueeze(0).expand(BW // mask.shape[0], -1, -1, -1, -1).reshape(
                BW, self.num_heads, n, n)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0., scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            out = self.attn_drop(attn.softmax(dim=-1)) @ v
        return out.transpose(1, 2).reshape(BW, n, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]``, any ``H, W >= 1``."""
        check_channels_last(x, self.dim)
        if not torch.jit.is_scripting():  # a static branch: TorchScript does not compile the symbolic path
            if is_exporting():
                return self._forward_symbolic(x)
        B, H, W, C = x.shape
        win, shift = self._geometry(H, W)
        windows = window_partition_(x, win, shift).reshape(-1, win[0] * win[1], C)
        mask = self._mask(H, W, win, shift, x.device, x.dtype)
        out = self._attend(windows, self._bias(win), mask)
        out = window_reverse_(out.view(-1, win[0], win[1], C), win, (H, W), shift)
        return self.proj_drop(self.proj(out))

    def _forward_symbolic(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for ``torch.export`` with symbolic ``H, W`` (ONNX with a dynamic image size).

        Every choice that :meth:`forward` makes from the map size in Python (window clamp, shift on or off, padding
        and its mask) would be taken once while tracing; here they are tensor arithmetic, so the graph holds for any
        size. The window is always the full ``window_size``: a map smaller than the window is padded to it and the
        padded keys are masked, which equals eager's clamped window read from the bias table's corner. The shift is a
        roll by index (:func:`_rolled_axis`), zero where the axis holds one window. Same values as :meth:`forward`.
        """
        B, H, W, C = x.shape
        win = self.window_size
        Hp, Wp = padded_size_((H, W), win)
        src_h, back_h, region_h, real_h = _rolled_axis(H, Hp, win[0], self.shift_size, x.device)
        src_w, back_w, region_w, real_w = _rolled_axis(W, Wp, win[1], self.shift_size, x.device)
        x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H)).index_select(1, src_h).index_select(2, src_w)
        windows = window_partition_(x, win, (0, 0)).reshape(-1, win[0] * win[1], C)
        mask = _rolled_window_mask(region_h, region_w, real_h, real_w, win, x.dtype)
        out = self._attend(windows, self._bias(win), mask)
        out = window_reverse_(out.view(-1, win[0], win[1], C), win, (Hp, Wp), (0, 0))
        out = out.index_select(1, back_h).index_select(2, back_w)[:, :H, :W]
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, shift={self.shift_size}'


def _is_symbolic(size: int) -> bool:
    """Whether ``size`` is symbolic (``torch.export`` with a dynamic dim); False in TorchScript."""
    if torch.jit.is_scripting():  # a static branch: TorchScript compiles only this one
        return False
    else:
        return isinstance(size, torch.SymInt)


@register_notrace_module  # shape-dependent control flow: an FX leaf
class WindowedCl(nn.Module):
    """Runs a family layer on cyclically shifted ``window x window`` windows of the map (a family block whose window
    is smaller than its stage, official ``SwinTransformerBlock`` partitioning without a mask)."""

    def __init__(self, layer: nn.Module, window: Tuple[int, int], shift: int):
        super().__init__()
        self.layer = layer
        self.window = (int(window[0]), int(window[1]))
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if _is_symbolic(H) or _is_symbolic(W):
            # the family layer sees the clamped window, so the clamp cannot become padding plus a mask as in
            # SwinWindowAttentionCl: a graph traced at one size would be wrong at sizes of the other regime
            raise ValueError(f'a family block on {self.window} windows (a model built with img_size above its '
                             f'family window) has no graph for a symbolic image size: export it with a static height '
                             f'and width')
        win = (min(self.window[0], H), min(self.window[1], W))
        shift = (self.shift if H > self.window[0] else 0, self.shift if W > self.window[1] else 0)
        windows = self.layer(window_partition_(x, win, shift))
        return window_reverse_(windows, win, (H, W), shift)

    def extra_repr(self) -> str:
        return f'window={self.window}, shift={self.shift}'


class SwinLikeStage(nn.Module):
    """Optional patch merging, then the stage's blocks."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            stage: int,
            num_heads: int,
            plans: Sequence[BlockPlan],
            attn_layer: AttnFactory,
            downsample: bool,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: Sequence[float] = (),
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        depth = len(plans)
        drop_path = tuple(drop_path) or (0.,) * depth
        self.downsample = PatchMergingCl(dim, out_dim, norm_layer=norm_layer, **dd) if downsample else nn.Identity()
        blocks = []
        for i, plan in enumerate(plans):
            if plan.kind == 'window':
                attn = SwinWindowAttentionCl(
                    out_dim, num_heads, plan.window, plan.shift, qkv_bias=qkv_bias, qk_scale=qk_scale,
                    attn_drop=attn_drop, proj_drop=proj_drop, **dd)
            else:
                attn = attn_layer(stage=stage, index=i, dim=out_dim, num_heads=num_heads, resolution=plan.window,
                                  attn_drop=attn_drop, proj_drop=proj_drop, **dd)
                if not isinstance(attn, nn.Module):
                    raise TypeError(f'attn_layer must return an nn.Module, got {type(attn).__name__}')
                if not plan.global_:
                    attn = WindowedCl(attn, plan.window, plan.shift)
            blocks.append(PreNormBlockCl(
                out_dim, attn_layer=attn, mlp_ratio=mlp_ratio, drop_path=drop_path[i], proj_drop=proj_drop,
                norm_layer=norm_layer, **dd))
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class SwinLike(StagedModelMixin, nn.Module):
    """Swin-layout model with a family attention (see the module docstring): stem at stride 4, four stages at
    strides 4, 8, 16, 32, channels-last features; the classifier and feature interface of
    :class:`~zoo.models._helpers.StagedModelMixin`."""

    output_fmt = 'NHWC'
    stage_fmt = 'NHWC'
    stem_name = 'patch_embed'

    def __init__(
            self,
            cfg: SwinLikeCfg,
            attn_layer: AttnFactory,
            attn_letter: str,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            cfg: architecture.
            attn_layer: factory of the family attention (interface in the module docstring).
            attn_letter: the family's letter in ``cfg.attn_type`` ('A' agent, 'I' InLine).
            in_chans: image channels.
            num_classes: classifier outputs (0: none).
            global_pool: head pooling ('avg', 'max', '' ...).
            drop_rate: dropout before the classifier.
            proj_drop_rate: dropout after projections and in MLPs.
            attn_drop_rate: attention dropout.
            drop_path_rate: stochastic depth, linear from 0 over all blocks.
            qkv_bias: bias of the Swin window blocks' ``qkv``.
            qk_scale: logit scale override of the Swin window blocks.
            norm_layer: channels-last norm (default ``nn.LayerNorm``, eps 1e-5, as the official models).
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument or config field outside its valid values, naming it.
            TypeError: ``attn_layer`` is not callable, or ``qkv_bias`` not a bool.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self._init_args(in_chans, num_classes, drop_rate, drop_path_rate)
        check_bool('qkv_bias', qkv_bias)  # used by the Swin window blocks only (the family blocks take their own)
        if not callable(attn_layer):
            raise TypeError(f'attn_layer must be a callable returning an nn.Module, got {attn_layer!r}')
        if not (isinstance(attn_letter, str) and len(attn_letter) == 1 and attn_letter not in WINDOW_LETTERS + ('M',)):
            raise ValueError(
                f"attn_letter must be one letter other than 'B', 'S', 'M', got attn_letter={attn_letter!r}")
        norm_layer = norm_layer or nn.LayerNorm
        self.cfg = cfg
        dims = cfg.dims
        self.num_features = dims[-1]
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbedCl(cfg.patch_size, in_chans, cfg.embed_dim, norm_layer=norm_layer, **dd)
        resolutions = cfg.resolutions()
        plans = plan_blocks(cfg.attn_type, cfg.depths, cfg.window_size, resolutions, attn_letter)
        dpr = calculate_drop_path_rates(drop_path_rate, sum(cfg.depths))
        stages, start = [], 0
        self.feature_info = []
        for i, depth in enumerate(cfg.depths):
            stages.append(SwinLikeStage(
                dims[max(i - 1, 0)], dims[i], i, cfg.num_heads[i], plans[i], attn_layer, downsample=i > 0,
                mlp_ratio=cfg.mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, drop_path=dpr[start:start + depth], norm_layer=norm_layer, **dd))
            start += depth
            self.feature_info.append(dict(num_chs=dims[i], reduction=cfg.patch_size * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features, **dd)
        self._init_head(num_classes, global_pool, drop_rate, dd)
        self.apply(init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Relative-position-bias tables (official ``no_weight_decay_keywords``)."""
        return {name for name, _ in self.named_parameters() if name.endswith('relative_position_bias_table')}


def swin_like_rename_rules() -> List[Tuple[str, Union[str, Callable]]]:
    """Official Swin keys -> this backbone's: ``layers.i.blocks`` -> ``stages.i.blocks``, ``layers.i.downsample`` ->
    ``stages.{i+1}.downsample``, window blocks' ``attn.relative_position_bias_table`` ->
    ``attn.rel_pos.relative_position_bias_table``, ``head`` -> ``head.fc`` (``relative_position_index`` buffers
    must be dropped by the caller)."""
    return [
        (r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.'),
        (r'^layers\.(\d+)\.downsample\.', lambda m: f'stages.{int(m.group(1)) + 1}.downsample.'),
        (r'\.attn\.relative_position_bias_table$', r'.attn.rel_pos.relative_position_bias_table'),
        (r'^head\.(weight|bias)$', r'head.fc.\1'),
    ]
