"""BiFormer: Vision Transformer with Bi-Level Routing Attention.

Paper:
    `BiFormer: Vision Transformer with Bi-Level Routing Attention` - https://arxiv.org/abs/2303.08810 (CVPR 2023)

    @inproceedings{zhu2023biformer,
        title = {BiFormer: Vision Transformer with Bi-Level Routing Attention},
        author = {Zhu, Lei and Wang, Xinjiang and Ke, Zhanghan and Zhang, Wayne and Lau, Rynson},
        booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
        year = {2023},
    }

Architecture and released weights: https://github.com/rayleizhu/BiFormer (MIT). This is an independent
implementation on :func:`zoo_kernels.routing.routed_attention` (see :mod:`zoo.layers.routing`). The blocks are the
shared pre-norm blocks (:class:`~zoo.layers.PreNormBlockCl` / :class:`~zoo.layers.PreNormBlock2d`) with a CPE in
front; the stems and downsamplers are the shared :class:`~zoo.layers.ConvStem2d`, :class:`~zoo.layers.PatchEmbed2d`
and :class:`~zoo.layers.ConvDownsample2d`.

Two layouts, both four stages at strides 4, 8, 16, 32 with NCHW maps between blocks, a BatchNorm2d after the last
stage and a mean-pool + Linear head:

* 'conv' (BiFormer-T/S/B): stem conv3x3/s2 -> BN -> GELU -> conv3x3/s2 -> BN; downsampling conv3x3/s2 -> BN; blocks
  with a depthwise 3x3 position embedding, LayerNorm (eps 1e-6), legacy BRA (``n_win`` 7, topk 1/4/16) and MLP
  ratio 3; stage 4 is full attention with LePE (8 heads).
* 'patch' (BiFormer-STL, the Swin-T layout of the ablations): stem conv4x4/s4 -> BN; downsampling BN -> conv2x2/s2;
  no position embedding; MLP ratio 4. ``biformer_stl`` uses the legacy BRA, ``biformer_stl_nchw`` the nchw BRA with
  LayerNorm2d, 1x1-conv projections and MLP.

Notes:
    * Any input size runs: the BRA pads to its region grid inside the block (see :mod:`zoo.layers.routing`). The
      'patch' layout's stride-2 convs floor odd sizes, as the official ones (inputs of at least 32 px).
    * Parameter names follow the official ones except for containers and the shared layers' names
      (``downsample_layers.0`` -> ``stem.conv1|norm1|conv2|norm2`` or ``stem.proj|norm``, ``downsample_layers.i`` ->
      ``stages.i.downsample.reduction|norm`` or ``.norm|proj``, the T/S/B blocks ``stages.i.j`` ->
      ``stages.i.blocks.j``, ``mlp.0`` / ``mlp.2|3`` -> timm's ``mlp.fc1`` / ``mlp.fc2``, layer scale ``gamma1|2``
      -> ``ls1|2.gamma``, ``head`` -> ``head.fc``); :func:`checkpoint_filter_fn` converts official checkpoints by
      key renames only.
    * The released checkpoints hold ``model`` and possibly ``model_ema``; the official loader takes ``model``, and
      so does the zoo's loader (:class:`~zoo.models._helpers.PretrainedFileMixin`, also for
      ``pretrained_cfg_overlay=dict(file=path)``; timm's generic loader would prefer the EMA). Their download URLs
      all end in ``/root/content``, so the cfgs give timm a file name per checkpoint (the official code's
      ``biformer_*_in1k.pth``); otherwise every download would share one cache file.
    * ``drop_path_rate`` defaults to 0; the official trainings used 0.1 (T, STL, STL-nchw) and 0.15 (S).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, Optional, Set, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ConvMlp, LayerNorm2d, Mlp, calculate_drop_path_rates, use_fused_attn
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from zoo.layers import (
    BiLevelRoutingAttention,
    BiLevelRoutingAttention2d,
    ConvDownsample2d,
    ConvStem2d,
    Cpe2d,
    PatchEmbed2d,
    PreNormBlock2d,
    PreNormBlockCl,
)
from zoo.layers._checks import check_channels_last, check_nchw, check_number
from zoo.layers.routing import check_routing_args, lepe_conv

from ._helpers import (
    StagedModelMixin,
    build_model,
    check_state_dict,
    init_weights,
    loader_adapted_keys,
    overlay_cfg_strict,
    rename_keys,
    unwrap_state_dict,
)

# checkpoint_filter_fn stays out of __all__: zoo.models star-imports every family and NAT exports that name too
__all__ = [
    'BiFormerCfg', 'AttentionLePE', 'AttentionLePE2d', 'BiFormerBlock', 'BiFormerBlock2d', 'BiFormerStage', 'BiFormer',
]

_LAYOUTS = ('conv', 'patch')
_BRAS = ('legacy', 'nchw')


@dataclass(frozen=True)
class BiFormerCfg:
    """Architecture of one BiFormer variant.

    Attributes:
        embed_dims: channels of the four stages.
        depths: blocks per stage.
        topks: routed regions per query region in each stage; -1 makes the stage full attention with LePE.
        head_dim: channels per head of the routing stages (heads = width // head_dim).
        full_attn_heads: heads of the full-attention stages (8 in every released model, whatever the width).
        n_win: regions per side of the BRA (legacy) / divisor of the region size (nchw).
        mlp_ratio: MLP hidden width over block width.
        side_dwconv: LePE depthwise kernel.
        pos_embed_kernel: depthwise-conv position embedding before attention in every block (0: none).
        layer_scale: init value of per-channel residual scales, or None (no released model has them).
        layout: 'conv' (overlapping conv stem and conv3x3 downsampling, BiFormer-T/S/B) or 'patch' (4x4 patch stem,
            BN + conv2x2 downsampling, BiFormer-STL).
        bra: 'legacy' (channels-last blocks, :class:`~zoo.layers.routing.BiLevelRoutingAttention`) or 'nchw'
            (NCHW blocks, :class:`~zoo.layers.routing.BiLevelRoutingAttention2d`).
        soft_routing: scale routed key/value rows by the routing softmax (legacy only).
        diff_routing: differentiable routing; without ``soft_routing`` it is straight-through hard routing (legacy).
        param_routing: learned routing Linear (legacy; needs ``diff_routing``).
    """
    embed_dims: Tuple[int, ...] = (64, 128, 256, 512)
    depths: Tuple[int, ...] = (2, 2, 8, 2)
    topks: Tuple[int, ...] = (1, 4, 16, -1)
    head_dim: int = 32
    full_attn_heads: int = 8
    n_win: int = 7
    mlp_ratio: float = 3.
    side_dwconv: int = 5
    pos_embed_kernel: int = 3
    layer_scale: Optional[float] = None
    layout: str = 'conv'
    bra: str = 'legacy'
    soft_routing: bool = False
    diff_routing: bool = False
    param_routing: bool = False

    def __post_init__(self):
        n = len(self.depths)
        if n < 1 or any(d < 1 for d in self.depths):
            raise ValueError(f'depths must be a non-empty sequence of ints >= 1, got depths={self.depths}')
        if len(self.embed_dims) != n or any(c < 1 for c in self.embed_dims):
            raise ValueError(f'embed_dims must give one int >= 1 per stage ({n}), got embed_dims={self.embed_dims}')
        if len(self.topks) != n or any(t < 1 and t != -1 for t in self.topks):
            raise ValueError(f'topks must give one int >= 1 or -1 per stage ({n}), got topks={self.topks}')
        if self.head_dim < 1 or any(c % self.head_dim for c, t in zip(self.embed_dims, self.topks) if t > 0):
            raise ValueError(f'head_dim must divide the widths of the routing stages, got head_dim={self.head_dim}')
        if self.full_attn_heads < 1 or any(
                c % self.full_attn_heads for c, t in zip(self.embed_dims, self.topks) if t == -1):
            raise ValueError(f'full_attn_heads must divide the widths of the full-attention stages, '
                             f'got full_attn_heads={self.full_attn_heads}')
        if self.n_win < 1:
            raise ValueError(f'n_win must be >= 1, got n_win={self.n_win}')
        if self.bra == 'legacy' and any(t > self.n_win ** 2 for t in self.topks):
            raise ValueError(f'topks must be <= n_win ** 2 = {self.n_win ** 2} with the legacy BRA, '
                             f'got topks={self.topks}')
        check_number('mlp_ratio', self.mlp_ratio, 0, low_open=True)
        if self.layout not in _LAYOUTS:
            raise ValueError(f'layout must be one of {_LAYOUTS}, got layout={self.layout!r}')
        if self.bra not in _BRAS:
            raise ValueError(f'bra must be one of {_BRAS}, got bra={self.bra!r}')
        if self.bra == 'nchw' and (self.soft_routing or self.diff_routing or self.param_routing):
            raise ValueError("soft_routing, diff_routing and param_routing need bra='legacy'; the nchw BRA routes "
                             "with detached descriptors and no weights")
        if self.param_routing and not self.diff_routing:
            raise ValueError('param_routing=True needs diff_routing=True')

    def num_heads(self, stage: int) -> int:
        if self.topks[stage] == -1:
            return self.full_attn_heads
        return self.embed_dims[stage] // self.head_dim


class _AttentionLePEBase(nn.Module):
    """Full multi-head attention with LePE; the subclasses choose the projection layer and the token layout."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool,
            qk_scale: Optional[float],
            side_dwconv: int,
            attn_drop: float,
            proj_drop: float,
            proj_layer: Callable[..., nn.Module],
            channels_last: bool,
            dd: Dict,
    ):
        super().__init__()
        check_routing_args(dim, num_heads, 1, 1, side_dwconv, qk_scale)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()

        self.qkv = proj_layer(dim, 3 * dim, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = proj_layer(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.lepe = lepe_conv(dim, side_dwconv, channels_last=channels_last, **dd)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``[B, heads, N, head_dim]`` q, k, v -> attention output of the same shape."""
        if self.fused_attn:
            return F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0., scale=self.scale)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        return self.attn_drop(attn.softmax(dim=-1)) @ v

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}'


class AttentionLePE(_AttentionLePEBase):
    """Full multi-head attention with LePE over a channels-last map (BiFormer stage 4, legacy).

    LePE (a depthwise conv) runs on the attention's input ``x``, not on v, and is added before ``proj``.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            qk_scale: Optional[float] = None,
            side_dwconv: int = 5,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the input and output.
            num_heads: attention heads (8 in every released model, whatever ``dim``).
            qkv_bias: bias in ``qkv`` (the official models have none).
            qk_scale: logit scale, default ``head_dim ** -0.5``.
            side_dwconv: LePE depthwise kernel (odd), 0 for none.
            attn_drop: attention-probability dropout.
            proj_drop: dropout after ``proj``.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside the values above, naming it.
        """
        super().__init__(
            dim, num_heads, qkv_bias, qk_scale, side_dwconv, attn_drop, proj_drop, nn.Linear, True,
            {'device': device, 'dtype': dtype})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]``."""
        check_channels_last(x, self.dim)
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = self._attend(q, k, v).transpose(1, 2).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + self.lepe(x)
        return self.proj_drop(self.proj(out))


class AttentionLePE2d(_AttentionLePEBase):
    """Full multi-head attention with LePE on v over an NCHW map (BiFormer-STL-nchw stage 4), 1x1-conv projections."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            qk_scale: Optional[float] = None,
            side_dwconv: int = 5,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the input and output.
            num_heads: attention heads (8 in the released model).
            qkv_bias: bias in ``qkv`` (the official model has none).
            qk_scale: logit scale, default ``head_dim ** -0.5``.
            side_dwconv: LePE depthwise kernel on v (odd), 0 for none.
            attn_drop: attention-probability dropout.
            proj_drop: dropout after ``proj``.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside the values above, naming it.
        """
        super().__init__(
            dim, num_heads, qkv_bias, qk_scale, side_dwconv, attn_drop, proj_drop, partial(nn.Conv2d, kernel_size=1),
            False, {'device': device, 'dtype': dtype})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim, H, W]`` -> ``[B, dim, H, W]``."""
        check_nchw(x, self.dim)
        B, C, H, W = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        # heads are contiguous channel chunks: [B, heads, H*W, head_dim]
        qh, kh, vh = (t.reshape(B, self.num_heads, self.head_dim, H * W).transpose(-1, -2) for t in (q, k, v))
        out = self._attend(qh, kh, vh).transpose(-1, -2).reshape(B, C, H, W)
        if self.lepe is not None:
            out = out + self.lepe(v)
        return self.proj_drop(self.proj(out))


def _block_attn(
        topk: int,
        full_attn_layer: Callable[..., nn.Module],
        routed_attn_layer: Callable[..., nn.Module],
        num_heads: int,
        n_win: int,
        side_dwconv: int,
        attn_kwargs: Optional[Dict[str, Any]],
) -> Tuple[Callable[..., nn.Module], Dict[str, Any]]:
    """The attention class and its keyword arguments for a block: full attention for ``topk = -1``, else BRA."""
    if topk < 1 and topk != -1:
        raise ValueError(f'topk must be >= 1 (routing) or -1 (full attention), got topk={topk}')
    kwargs = dict(num_heads=num_heads, side_dwconv=side_dwconv, **(attn_kwargs or {}))
    if topk == -1:
        return full_attn_layer, kwargs
    return routed_attn_layer, dict(kwargs, n_win=n_win, topk=topk)


def _pos_embed(dim: int, kernel: int, dd: Dict) -> Optional[Cpe2d]:
    if kernel < 0 or (kernel and kernel % 2 == 0):
        raise ValueError(f'pos_embed_kernel must be 0 (none) or odd, got pos_embed_kernel={kernel}')
    return Cpe2d(dim, kernel, **dd) if kernel else None


class BiFormerBlock(PreNormBlockCl):
    """Legacy BiFormer block: ``x + DWConv(x)`` (CPE, NCHW), then channels-last ``x + attn(LN(x))``, ``x + MLP(LN(x))``.

    Takes and returns NCHW; the :class:`~zoo.layers.PreNormBlockCl` residuals run channels-last. A block with
    ``topk = -1`` uses full attention (:class:`AttentionLePE`), otherwise
    :class:`~zoo.layers.BiLevelRoutingAttention`.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            topk: int = 4,
            n_win: int = 7,
            mlp_ratio: float = 3.,
            side_dwconv: int = 5,
            pos_embed_kernel: int = 3,
            layer_scale: Optional[float] = None,
            drop_path: float = 0.,
            attn_kwargs: Optional[Dict[str, Any]] = None,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: block width.
            num_heads: attention heads (of the BRA, or of the full attention when ``topk = -1``).
            topk: routed regions per query region, or -1 for full attention with LePE.
            n_win: regions per side of the BRA.
            mlp_ratio: MLP hidden width over ``dim``.
            side_dwconv: LePE kernel.
            pos_embed_kernel: depthwise-conv position embedding kernel before attention (0: none).
            layer_scale: init value of the per-channel residual scales ``ls1.gamma`` / ``ls2.gamma`` (the official
                ``gamma1`` / ``gamma2``), or None.
            drop_path: stochastic depth rate of both residual branches.
            attn_kwargs: further keyword arguments of the attention module (``qk_scale``, ``soft_routing``, ...).
            act_layer: MLP activation.
            norm_layer: channels-last norm, default ``nn.LayerNorm`` with eps 1e-6.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside its valid values, naming it.
        """
        dd = {'device': device, 'dtype': dtype}
        attn_layer, attn_kwargs = _block_attn(
            topk, AttentionLePE, BiLevelRoutingAttention, num_heads, n_win, side_dwconv, attn_kwargs)
        pos_embed = _pos_embed(dim, pos_embed_kernel, dd)
        super().__init__(
            dim, attn_layer, mlp_layer=Mlp, attn_kwargs=attn_kwargs, mlp_ratio=mlp_ratio, init_values=layer_scale,
            drop_path=drop_path, act_layer=act_layer, norm_layer=norm_layer or partial(nn.LayerNorm, eps=1e-6), **dd)
        self.pos_embed = pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim, H, W]`` -> ``[B, dim, H, W]``."""
        if self.pos_embed is not None:
            x = self.pos_embed(x)
        return self.forward_branches(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class BiFormerBlock2d(PreNormBlock2d):
    """BiFormer block of the nchw model: ``x + attn(LN2d(x))``, ``x + MLP1x1(LN2d(x))``, all NCHW.

    A block with ``topk = -1`` uses :class:`AttentionLePE2d`, otherwise :class:`~zoo.layers.BiLevelRoutingAttention2d`.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            topk: int = 4,
            n_win: int = 7,
            mlp_ratio: float = 4.,
            side_dwconv: int = 5,
            pos_embed_kernel: int = 0,
            layer_scale: Optional[float] = None,
            drop_path: float = 0.,
            attn_kwargs: Optional[Dict[str, Any]] = None,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: block width.
            num_heads: attention heads (of the BRA, or of the full attention when ``topk = -1``).
            topk: routed regions per query region, or -1 for full attention with LePE on v.
            n_win: the BRA's region size is ``(H // n_win, W // n_win)``.
            mlp_ratio: MLP hidden width over ``dim``.
            side_dwconv: LePE kernel.
            pos_embed_kernel: depthwise-conv position embedding kernel before attention (0: none, as released).
            layer_scale: init value of the per-channel residual scales ``ls1.gamma`` / ``ls2.gamma``, or None.
            drop_path: stochastic depth rate of both residual branches.
            attn_kwargs: further keyword arguments of the attention module (``qk_scale``).
            act_layer: MLP activation.
            norm_layer: NCHW norm, default timm ``LayerNorm2d`` with eps 1e-6.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument outside its valid values, naming it.
        """
        dd = {'device': device, 'dtype': dtype}
        attn_layer, attn_kwargs = _block_attn(
            topk, AttentionLePE2d, BiLevelRoutingAttention2d, num_heads, n_win, side_dwconv, attn_kwargs)
        pos_embed = _pos_embed(dim, pos_embed_kernel, dd)
        super().__init__(
            dim, attn_layer, mlp_layer=ConvMlp, attn_kwargs=attn_kwargs, mlp_ratio=mlp_ratio,
            init_values=layer_scale, drop_path=drop_path, act_layer=act_layer, norm_layer=norm_layer or LayerNorm2d,
            **dd)
        self.pos_embed = pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim, H, W]`` -> ``[B, dim, H, W]``."""
        if self.pos_embed is not None:
            x = self.pos_embed(x)
        return self.forward_branches(x)


class BiFormerStage(nn.Module):
    """Optional 2x downsampler followed by BiFormer blocks; NCHW in and out."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            topk: int,
            cfg: BiFormerCfg,
            downsample: bool = True,
            drop_path: Tuple[float, ...] = (),
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: input channels.
            out_dim: channels of the blocks.
            depth: number of blocks.
            num_heads: attention heads of the blocks.
            topk: routed regions per query region, -1 for full attention.
            cfg: the variant (layout, BRA kind, block options).
            downsample: start with the layout's 2x downsampler (``dim -> out_dim``).
            drop_path: one stochastic-depth rate per block (default all 0).
            device: device of the parameters.
            dtype: dtype of the parameters.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        drop_path = tuple(drop_path) or (0.,) * depth
        if len(drop_path) != depth:
            raise ValueError(f'drop_path must have depth={depth} entries, got drop_path={drop_path}')
        if not downsample:
            if dim != out_dim:
                raise ValueError(f'out_dim must equal dim without a downsampler, got dim={dim}, out_dim={out_dim}')
            self.downsample = nn.Identity()
        elif cfg.layout == 'conv':
            self.downsample = ConvDownsample2d(dim, out_dim, **dd)
        else:
            self.downsample = PatchEmbed2d(2, dim, out_dim, norm_first=True, **dd)
        if cfg.bra == 'legacy':
            block_cls = BiFormerBlock
            attn_kwargs = {} if topk == -1 else dict(
                soft_routing=cfg.soft_routing, diff_routing=cfg.diff_routing, param_routing=cfg.param_routing)
        else:
            block_cls, attn_kwargs = BiFormerBlock2d, {}
        self.blocks = nn.Sequential(*[
            block_cls(
                out_dim, num_heads,
                topk=topk,
                n_win=cfg.n_win,
                mlp_ratio=cfg.mlp_ratio,
                side_dwconv=cfg.side_dwconv,
                pos_embed_kernel=cfg.pos_embed_kernel,
                layer_scale=cfg.layer_scale,
                drop_path=drop_path[i],
                attn_kwargs=attn_kwargs,
                **dd,
            )
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class BiFormer(StagedModelMixin, nn.Module):
    """BiFormer-T/S/B and BiFormer-STL(-nchw): a stride-4 stem and four stages at strides 4, 8, 16, 32 (NCHW).

    ``forward_features`` maps ``[B, in_chans, H, W]`` to normed ``[B, num_features, H/32, W/32]`` (ceil for 'conv',
    floor for 'patch'); the classifier and feature interface come from :class:`StagedModelMixin`.
    """

    stage_fmt = 'NCHW'
    stem_name = 'stem'

    def __init__(
            self,
            cfg: BiFormerCfg,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
            **kwargs,
    ):
        """
        Args:
            cfg: architecture; fields can be overridden by keyword (``n_win=8``, ``topks=...``).
            in_chans: image channels.
            num_classes: classifier outputs (0: no classifier).
            global_pool: pooling of the head ('avg', 'max', 'avgmax', '' ...).
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
            device: device of the parameters.
            dtype: dtype of the parameters.
            **kwargs: ``BiFormerCfg`` fields overriding ``cfg``.

        Raises:
            ValueError: an argument or config field outside its valid values, naming it.
            TypeError: a keyword that is neither an argument nor a ``BiFormerCfg`` field.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        cfg = overlay_cfg_strict(cfg, kwargs)
        self._init_args(in_chans, num_classes, drop_rate, drop_path_rate)
        self.cfg = cfg
        dims = cfg.embed_dims
        self.num_features = dims[-1]
        self.grad_checkpointing = False

        if cfg.layout == 'conv':
            self.stem = ConvStem2d(in_chans, dims[0], **dd)
        else:
            self.stem = PatchEmbed2d(4, in_chans, dims[0], **dd)

        dpr = calculate_drop_path_rates(drop_path_rate, sum(cfg.depths))
        stages = []
        self.feature_info = []
        start = 0
        for i, depth in enumerate(cfg.depths):
            stages.append(BiFormerStage(
                dims[max(i - 1, 0)], dims[i], depth, cfg.num_heads(i), cfg.topks[i], cfg,
                downsample=i > 0,
                drop_path=dpr[start:start + depth],
                **dd,
            ))
            start += depth
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(self.num_features, **dd)
        self._init_head(num_classes, global_pool, drop_rate, dd)
        self.apply(init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """No parameter is exempt by name (timm still exempts biases and norm weights by shape)."""
        return set()


# official Sequential index -> our module name, per layout: stem (``downsample_layers.0``) and stage downsamplers
_SEQ_NAMES = {
    'conv': ({0: 'conv1', 1: 'norm1', 3: 'conv2', 4: 'norm2'}, {0: 'reduction', 1: 'norm'}),
    'patch': ({0: 'proj', 1: 'norm'}, {0: 'norm', 1: 'proj'}),
}


def _native_rules(layout: str) -> list:
    """Renames from the indexed ``stem.i`` / ``downsample.i`` Sequentials (official, and this module's layout
    before the shared stems) and from ``gamma1/2`` to the current names."""
    stem_names, down_names = _SEQ_NAMES[layout]
    return [
        (r'^stem\.(\d+)\.', lambda m: f'stem.{stem_names[int(m.group(1))]}.'),
        (r'^(stages\.\d+\.downsample)\.(\d+)\.', lambda m: f'{m.group(1)}.{down_names[int(m.group(2))]}.'),
        (r'\.gamma([12])$', r'.ls\1.gamma'),
    ]


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official BiFormer / BiFormer-STL / BiFormer-STL-nchw checkpoint to this module's layout.

    Accepts a plain state dict or one wrapped as ``{'model': ...}`` / ``{'state_dict': ...}``. A dict already in
    this layout (``stem.*`` / ``head.fc.*`` keys) is returned with only the renames of earlier native layouts
    (indexed ``stem.i`` / ``downsample.i``, ``gamma1/2``). Official keys are renamed: ``downsample_layers.0.i`` ->
    ``stem.<conv1|norm1|conv2|norm2>`` ('conv' layout) or ``stem.<proj|norm>`` ('patch'),
    ``downsample_layers.i.j`` -> ``stages.i.downsample.<reduction|norm>`` ('conv') or ``<norm|proj>`` ('patch', BN
    first), ``stages.i.j`` -> ``stages.i.blocks.j`` (BiFormer-T/S/B), ``mlp.0`` -> ``mlp.fc1``, ``mlp.2`` / ``mlp.3``
    -> ``mlp.fc2``, ``gamma1`` / ``gamma2`` -> ``ls1.gamma`` / ``ls2.gamma`` and ``head`` -> ``head.fc``. Nothing
    is dropped or reshaped.

    Raises:
        ValueError: the converted dict does not have exactly the model's keys and shapes (the classifier and the
            first conv excepted: the loaders adapt them to ``num_classes`` / ``in_chans``).
    """
    state_dict = unwrap_state_dict(state_dict)
    layout = model.cfg.layout if isinstance(model, BiFormer) else 'conv'
    if any(k.startswith(('stem.', 'head.fc.')) for k in state_dict):
        rules = _native_rules(layout)
    else:
        rules = [
            (r'^downsample_layers\.0\.', 'stem.'),
            (r'^downsample_layers\.(\d+)\.', r'stages.\1.downsample.'),
            (r'^stages\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.'),
            (r'\.mlp\.0\.', '.mlp.fc1.'),
            (r'\.mlp\.[23]\.', '.mlp.fc2.'),
            (r'^head\.(weight|bias)$', r'head.fc.\1'),
            *_native_rules(layout),
        ]
    out = rename_keys(state_dict, rules)
    check_state_dict(out, model, exempt=loader_adapted_keys(model))
    return out


def _create_biformer(variant: str, pretrained: bool = False, **kwargs) -> BiFormer:
    cfg = model_cfgs[variant]
    out_indices = kwargs.pop('out_indices', tuple(range(len(cfg.depths))))
    return build_model(
        BiFormer, variant, pretrained,
        model_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _stl(bra: str, **kwargs) -> BiFormerCfg:
    return BiFormerCfg(
        embed_dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), mlp_ratio=4., pos_embed_kernel=0, layout='patch',
        bra=bra, **kwargs)


_TEST = dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), topks=(1, 2, 4, -1), head_dim=8, full_attn_heads=4,
             n_win=2, mlp_ratio=2.)

model_cfgs = dict(
    biformer_tiny=BiFormerCfg(),
    biformer_small=BiFormerCfg(depths=(4, 4, 18, 4)),
    biformer_base=BiFormerCfg(embed_dims=(96, 192, 384, 768), depths=(4, 4, 18, 4)),
    biformer_stl=_stl('legacy'),
    biformer_stl_nchw=_stl('nchw'),

    # tiny variants for tests and the CPU demo (32x32 / 64x64 inputs): 2x2 regions, the last stage full attention
    biformer_test=BiFormerCfg(**_TEST),
    biformer_stl_test=BiFormerCfg(**dict(_TEST, pos_embed_kernel=0, layout='patch')),
    biformer_stl_nchw_test=BiFormerCfg(**dict(_TEST, pos_embed_kernel=0, layout='patch', bra='nchw')),
)


_URL = 'https://api.onedrive.com/v1.0/shares/{}/root/content'


def _cfg(url: Any = '', **kwargs) -> Dict:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': .875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1',
        'classifier': 'head.fc',
        'custom_load': True,  # files and URLs go through PretrainedFileMixin.load_pretrained
        'license': 'mit',
        'origin_url': 'https://github.com/rayleizhu/BiFormer',
        'paper_ids': 'arXiv:2303.08810',
        'paper_name': 'BiFormer: Vision Transformer with Bi-Level Routing Attention',
        **kwargs,
    }


def _released(share_id: str, file_name: str, **kwargs) -> Dict:
    # (url, file name): a cache name per checkpoint
    return _cfg((_URL.format(share_id), file_name), **kwargs)


_TEST_CFG = dict(input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0)
_PATCH = dict(first_conv='stem.proj')  # the 'patch' layout's stem

default_cfgs = generate_default_cfgs({
    'biformer_tiny.in1k': _released('s!AkBbczdRlZvChHEOoGkgwgQzEDlM', 'biformer_tiny_in1k.pth'),
    'biformer_small.in1k': _released('s!AkBbczdRlZvChHDyM-x9KWRBZ832', 'biformer_small_in1k.pth'),
    'biformer_base.in1k': _released('s!AkBbczdRlZvChHI_XPhoadjaNxtO', 'biformer_base_in1k.pth'),
    'biformer_stl.in1k': _released('s!AkBbczdRlZvChSf-m7ujkvx9lIQ1', 'biformer_stl_in1k.pth', **_PATCH),
    'biformer_stl_nchw.in1k': _released('s!AkBbczdRlZvChWYrKbWbMgqd2Ai0', 'biformer_stl_nchw_in1k.pth', **_PATCH),

    'biformer_test': _cfg(**_TEST_CFG),
    'biformer_stl_test': _cfg(**_TEST_CFG, **_PATCH),
    'biformer_stl_nchw_test': _cfg(**_TEST_CFG, **_PATCH),
})


@register_model
def biformer_tiny(pretrained: bool = False, **kwargs) -> BiFormer:
    return _create_biformer('biformer_tiny', pretrained=pretrained, **kwargs)


@register_model
def biformer_small(pretrained: bool = False, **kwargs) -> BiFormer:
    return _create_biformer('biformer_small', pretrained=pretrained, **kwargs)


@register_model
def biformer_base(pretrained: bool = False, **kwargs) -> BiFormer:
    return _create_biformer('biformer_base', pretrained=pretrained, **kwargs)


@register_model
def biformer_stl(pretrained: bool = False, **kwargs) -> BiFormer:
    return _create_biformer('biformer_stl', pretrained=pretrained, **kwargs)


@register_model
def biformer_stl_nchw(pretrained: bool = False, **kwargs) -> BiFormer:
    return _create_biformer('biformer_stl_nchw', pretrained=pretrained, **kwargs)


@register_model
def biformer_test(pretrained: bool = False, **kwargs) -> BiFormer:
    return _create_biformer('biformer_test', pretrained=pretrained, **kwargs)


@register_model
def biformer_stl_test(pretrained: bool = False, **kwargs) -> BiFormer:
    return _create_biformer('biformer_stl_test', pretrained=pretrained, **kwargs)


@register_model
def biformer_stl_nchw_test(pretrained: bool = False, **kwargs) -> BiFormer:
    return _create_biformer('biformer_stl_nchw_test', pretrained=pretrained, **kwargs)
