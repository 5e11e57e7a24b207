"""Neighborhood Attention Transformer (NAT), Dilated NAT (DiNAT), DiNAT_s and isotropic NAT / DiNAT / ViT-RPB.

Papers:
    `Neighborhood Attention Transformer` - https://arxiv.org/abs/2204.07143 (CVPR 2023)
    `Dilated Neighborhood Attention Transformer` - https://arxiv.org/abs/2209.15001

    @inproceedings{hassani2023neighborhood,
        title = {Neighborhood Attention Transformer},
        author = {Hassani, Ali and Walton, Steven and Li, Jiachen and Li, Shen and Shi, Humphrey},
        booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
        year = {2023},
    }
    @article{hassani2022dilated,
        title = {Dilated Neighborhood Attention Transformer},
        author = {Hassani, Ali and Shi, Humphrey},
        journal = {arXiv preprint arXiv:2209.15001},
        year = {2022},
    }

Architecture and released weights: https://github.com/SHI-Labs/Neighborhood-Attention-Transformer (MIT). This is an
independent implementation on :func:`zoo_kernels.neighborhood.na2d`; it needs no NATTEN build.

Families, all with pre-norm blocks ``x + NA(LN(x))``, ``x + MLP(LN(x))`` (optional layer scale ``gamma1/gamma2``)
and a head of LN -> mean over tokens -> Linear:

* NAT / DiNAT: conv stem (two 3x3 stride-2 convs + LN), 4 stages joined by conv3x3/s2 downsamplers; DiNAT alternates
  dilation 1 and ``floor(stage_res / kernel)`` (at the 224 px training size) inside each stage.
* DiNAT_s: Swin layout (4x4 patch stem, patch merging), mlp ratio 4, NA and DiNA alternating.
* Isotropic: 16x16 patch stem, 12 blocks at one resolution: NA (``nat_isotropic_*``), NA/DiNA alternating
  (``dinat_isotropic_*``) or global attention with the same relative bias (``vitrpb_*``).

Notes:
    * Any input size works: the stems and patch merging pad right/bottom to their stride, and a token map smaller
      than ``kernel_size * dilation`` is padded before the NA ``qkv`` projection and cropped after it, as the
      NATTEN <= 0.15 modules the checkpoints were trained with did. ViT-RPB accepts any grid up to its
      ``img_size // patch_size`` bias table.
    * Parameter names follow the official ones except for the container path (``levels.i`` / ``layers.i`` ->
      ``stages.i`` / ``blocks.i``, the downsampler moved to the start of the next stage as in timm's Swin, and
      ``head`` -> ``head.fc``); :func:`checkpoint_filter_fn` converts official checkpoints by key renames only.
    * ``drop_path_rate`` defaults to 0; the official trainings used 0.2 (mini/tiny), 0.3 (small), 0.5 (base),
      0.35 (large; 0.2 for the ImageNet-22K pre-training), 0.1 / 0.4 (isotropic small / base).
    * Pretrained cfgs point ``url`` at the official checkpoint files (plain state dicts, converted on load by
      :func:`checkpoint_filter_fn`). ``pretrained=True`` without ``pretrained_cfg_overlay=dict(file=...)`` downloads
      from shi-labs.com. The ImageNet-22K heads are assumed to have 21841 classes (the official code does not say).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, calculate_drop_path_rates, to_2tuple
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, generate_default_cfgs, register_model

from zoo.layers import (
    ConvDownsampleCl, ConvStemCl, NeighborhoodAttention2d, PatchEmbedCl, PatchMergingCl, RpbAttention2d,
)
from ._helpers import (
    ClassifierMixin, StagedModelMixin, check_output_fmt, check_state_dict, feature_take_indices,
    init_weights, overlay_cfg, rename_keys, unwrap_state_dict,
)

__all__ = ['NatCfg', 'NatBlock', 'NatStage', 'Nat', 'NatIsotropic', 'checkpoint_filter_fn']

_STEMS = ('conv', 'patch')
_DOWNSAMPLES = ('conv', 'merge')
_ATTNS = ('na', 'global_rpb')


@dataclass(frozen=True)
class NatCfg:
    """Architecture of one NAT-family variant.

    Attributes:
        embed_dim: channels of the first stage (hierarchical: doubled at every stage) or of every block (isotropic).
        depths: blocks per stage; one entry for isotropic models.
        num_heads: attention heads per stage.
        kernel_size: neighbourhood size of every NA block.
        dilations: per stage, the dilation of each block; None means 1 everywhere.
        mlp_ratio: MLP hidden width over block width.
        layer_scale: init value of the per-channel ``gamma1/gamma2`` residual scales, or None for none.
        stem: 'conv' (two 3x3 stride-2 convs, NAT/DiNAT) or 'patch' (one ``patch_size`` conv).
        patch_size: stride of the 'patch' stem.
        downsample: 'conv' (conv3x3/s2, NAT/DiNAT) or 'merge' (Swin patch merging, DiNAT_s) between stages.
        attn: 'na' (neighborhood attention) or 'global_rpb' (global attention with relative bias, ViT-RPB).
        isotropic: one resolution, no downsampling (``NatIsotropic``).
        img_size: image size the 'global_rpb' bias table is built for (``img_size // patch_size`` tokens per axis);
            unused by NA models.
    """
    embed_dim: int = 64
    depths: Tuple[int, ...] = (3, 4, 6, 5)
    num_heads: Tuple[int, ...] = (2, 4, 8, 16)
    kernel_size: int = 7
    dilations: Optional[Tuple[Tuple[int, ...], ...]] = None
    mlp_ratio: float = 3.
    layer_scale: Optional[float] = None
    stem: str = 'conv'
    patch_size: int = 4
    downsample: str = 'conv'
    attn: str = 'na'
    isotropic: bool = False
    img_size: Union[int, Tuple[int, int]] = 224

    def __post_init__(self):
        depths, heads = tuple(self.depths), tuple(self.num_heads)
        if not depths or any(d < 1 for d in depths):
            raise ValueError(f'depths must be a non-empty sequence of ints >= 1, got depths={self.depths}')
        if len(heads) != len(depths) or any(h < 1 for h in heads):
            raise ValueError(f'num_heads must give one int >= 1 per stage ({len(depths)}), got num_heads={heads}')
        if self.isotropic and len(depths) != 1:
            raise ValueError(f'depths must have one entry for an isotropic model, got depths={depths}')
        dims = [self.embed_dim * (1 if self.isotropic else 2 ** i) for i in range(len(depths))]
        if self.embed_dim < 1 or any(d % h for d, h in zip(dims, heads)):
            raise ValueError(f'num_heads must divide the stage widths {dims}, got num_heads={heads}')
        if self.dilations is not None:
            if len(self.dilations) != len(depths) or any(
                    len(ds) != n or any(d < 1 for d in ds) for ds, n in zip(self.dilations, depths)):
                raise ValueError(
                    f'dilations must give one int >= 1 per block of each stage (depths={depths}), '
                    f'got dilations={self.dilations}')
        if self.stem not in _STEMS:
            raise ValueError(f'stem must be one of {_STEMS}, got stem={self.stem!r}')
        if self.downsample not in _DOWNSAMPLES:
            raise ValueError(f'downsample must be one of {_DOWNSAMPLES}, got downsample={self.downsample!r}')
        if self.attn not in _ATTNS:
            raise ValueError(f'attn must be one of {_ATTNS}, got attn={self.attn!r}')
        if self.attn == 'global_rpb' and not self.isotropic:
            raise ValueError("attn='global_rpb' is only supported with isotropic=True")
        if self.mlp_ratio <= 0:
            raise ValueError(f'mlp_ratio must be > 0, got mlp_ratio={self.mlp_ratio}')
        if self.patch_size < 1:
            raise ValueError(f'patch_size must be >= 1, got patch_size={self.patch_size}')

    def stage_dilations(self, stage: int) -> Tuple[int, ...]:
        if self.dilations is None:
            return (1,) * self.depths[stage]
        return tuple(self.dilations[stage])


class NatBlock(nn.Module):
    """Pre-norm transformer block with neighborhood (or global relative-bias) attention, channels-last."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 7,
            dilation: int = 1,
            attn: str = 'na',
            grid_size: Union[int, Tuple[int, int]] = 14,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            layer_scale: Optional[float] = None,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: block width.
            num_heads: attention heads.
            kernel_size: neighbourhood size ('na').
            dilation: neighbourhood dilation ('na').
            attn: 'na' or 'global_rpb'.
            grid_size: token grid of the 'global_rpb' bias table.
            mlp_ratio: MLP hidden width over ``dim``.
            qkv_bias: bias in the ``qkv`` projection.
            qk_scale: logit scale override (default ``head_dim ** -0.5``).
            layer_scale: init value of ``gamma1``/``gamma2`` or None (no layer scale).
            proj_drop: dropout after the attention projection and in the MLP.
            attn_drop: attention dropout ('global_rpb' only; NA requires 0).
            drop_path: stochastic depth rate of both residual branches.
            act_layer: MLP activation.
            norm_layer: channels-last norm.
            device: device of the parameters.
            dtype: dtype of the parameters.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = norm_layer(dim, **dd)
        if attn == 'na':
            self.attn = NeighborhoodAttention2d(
                dim, num_heads, kernel_size=kernel_size, dilation=dilation, qkv_bias=qkv_bias, qk_scale=qk_scale,
                attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        elif attn == 'global_rpb':
            self.attn = RpbAttention2d(
                dim, num_heads, grid_size=grid_size, qkv_bias=qkv_bias, qk_scale=qk_scale,
                attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        else:
            raise ValueError(f'attn must be one of {_ATTNS}, got attn={attn!r}')
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale), **dd))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale), **dd))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, H, W, dim]``."""
        y = self.attn(self.norm1(x))
        if self.gamma1 is not None:
            y = self.gamma1 * y
        x = x + self.drop_path1(y)
        y = self.mlp(self.norm2(x))
        if self.gamma2 is not None:
            y = self.gamma2 * y
        return x + self.drop_path2(y)


class NatStage(nn.Module):
    """Optional 2x downsampler followed by NA blocks."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            kernel_size: int = 7,
            dilations: Sequence[int] = (),
            downsample: Optional[str] = None,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            layer_scale: Optional[float] = None,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: Sequence[float] = (),
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: input channels.
            out_dim: channels of the blocks (the downsampler maps ``dim`` to it).
            depth: number of blocks.
            num_heads: attention heads.
            kernel_size: neighbourhood size.
            dilations: one dilation per block (default all 1).
            downsample: None, 'conv' or 'merge'.
            mlp_ratio: MLP hidden width over ``out_dim``.
            qkv_bias: bias in the ``qkv`` projections.
            qk_scale: logit scale override.
            layer_scale: layer-scale init value or None.
            proj_drop: projection / MLP dropout.
            attn_drop: attention dropout (must be 0 for NA).
            drop_path: one stochastic-depth rate per block (default all 0).
            norm_layer: channels-last norm.
            device: device of the parameters.
            dtype: dtype of the parameters.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        dilations = tuple(dilations) or (1,) * depth
        drop_path = tuple(drop_path) or (0.,) * depth
        if len(dilations) != depth or len(drop_path) != depth:
            raise ValueError(f'dilations and drop_path must have depth={depth} entries, '
                             f'got dilations={dilations}, drop_path={drop_path}')
        if downsample is None:
            if dim != out_dim:
                raise ValueError(f'out_dim must equal dim without a downsampler, got dim={dim}, out_dim={out_dim}')
            self.downsample = nn.Identity()
        elif downsample == 'conv':
            self.downsample = ConvDownsampleCl(dim, out_dim, norm_layer=norm_layer, **dd)
        elif downsample == 'merge':
            self.downsample = PatchMergingCl(dim, out_dim, norm_layer=norm_layer, **dd)
        else:
            raise ValueError(f'downsample must be None or one of {_DOWNSAMPLES}, got downsample={downsample!r}')
        self.blocks = nn.Sequential(*[
            NatBlock(
                out_dim, num_heads, kernel_size=kernel_size, dilation=dilations[i], mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, layer_scale=layer_scale, proj_drop=proj_drop,
                attn_drop=attn_drop, drop_path=drop_path[i], norm_layer=norm_layer, **dd)
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _norm_layer(norm_layer: Optional[Callable[..., nn.Module]]) -> Callable[..., nn.Module]:
    # official models use torch's LayerNorm (eps 1e-5); timm's LayerNorm defaults to 1e-6
    return norm_layer or partial(nn.LayerNorm, eps=1e-5)


class _NatBase(ClassifierMixin, nn.Module):
    """The constructor checks, stem and classifier interface shared by the hierarchical and isotropic models."""

    output_fmt = 'NHWC'
    stage_fmt = 'NHWC'
    stem_name = 'patch_embed'
    _isotropic = False

    def _init_cfg(
            self,
            cfg: NatCfg,
            kwargs: Dict,
            in_chans: int,
            num_classes: int,
            drop_rate: float,
            drop_path_rate: float,
    ) -> NatCfg:
        """Overlay ``kwargs`` on ``cfg``, validate the arguments and store the config as ``self.cfg``."""
        cfg = overlay_cfg(cfg, kwargs)
        if kwargs:
            raise TypeError(f'unexpected keyword arguments {sorted(kwargs)}; NatCfg fields are '
                            f'{sorted(NatCfg.__dataclass_fields__)}')
        self._init_args(in_chans, num_classes, drop_rate, drop_path_rate)
        if cfg.isotropic != self._isotropic:
            raise ValueError('cfg.isotropic must be True for NatIsotropic; use Nat' if self._isotropic else
                             'cfg.isotropic must be False for Nat; use NatIsotropic')
        self.cfg = cfg
        return cfg

    def _init_stem(self, in_chans: int, norm_layer: Callable[..., nn.Module], dd: Dict) -> int:
        """Build ``self.patch_embed`` from ``self.cfg.stem``; returns its stride."""
        cfg = self.cfg
        if cfg.stem == 'conv':
            self.patch_embed = ConvStemCl(in_chans, cfg.embed_dim, norm_layer=norm_layer, **dd)
            return 4
        self.patch_embed = PatchEmbedCl(cfg.patch_size, in_chans, cfg.embed_dim, norm_layer=norm_layer, **dd)
        return cfg.patch_size

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Names of the relative-position-bias tables."""
        return {name for name, _ in self.named_parameters() if name.endswith('.rpb')}


class Nat(_NatBase, StagedModelMixin):
    """Hierarchical NAT / DiNAT / DiNAT_s: stem at stride 4, four stages at strides 4, 8, 16, 32.

    Features stay channels-last (``[B, H, W, C]``) through the network; ``forward_intermediates`` and
    ``features_only`` return NCHW by default. ``forward_features`` maps ``[B, in_chans, H, W]`` to normed
    ``[B, ceil(H/32), ceil(W/32), num_features]``; the classifier and feature interface come from
    :class:`StagedModelMixin`.
    """

    def __init__(
            self,
            cfg: NatCfg,
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
            **kwargs,
    ):
        """
        Args:
            cfg: architecture; fields can be overridden by keyword (``kernel_size=5``, ``dilations=...``).
            in_chans: image channels.
            num_classes: classifier outputs (0: no classifier).
            global_pool: pooling of the head ('avg', 'max', 'avgmax', '' ...).
            drop_rate: dropout before the classifier.
            proj_drop_rate: dropout after attention projections and in MLPs.
            attn_drop_rate: attention dropout (must be 0: NA runs fused).
            drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
            qkv_bias: bias in the ``qkv`` projections.
            qk_scale: logit scale override (default ``head_dim ** -0.5``).
            norm_layer: channels-last norm (default ``nn.LayerNorm`` with eps 1e-5, as the official models).
            device: device of the parameters.
            dtype: dtype of the parameters.
            **kwargs: ``NatCfg`` fields overriding ``cfg``.

        Raises:
            ValueError: an argument or config field outside its valid values, naming it.
            TypeError: a keyword that is neither an argument nor a ``NatCfg`` field.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        cfg = self._init_cfg(cfg, kwargs, in_chans, num_classes, drop_rate, drop_path_rate)
        norm_layer = _norm_layer(norm_layer)
        num_stages = len(cfg.depths)
        dims = [cfg.embed_dim * 2 ** i for i in range(num_stages)]
        self.num_features = dims[-1]
        self.grad_checkpointing = False

        stem_stride = self._init_stem(in_chans, norm_layer, dd)

        dpr = calculate_drop_path_rates(drop_path_rate, sum(cfg.depths))
        stages = []
        self.feature_info = []
        start = 0
        for i in range(num_stages):
            stages.append(NatStage(
                dims[max(i - 1, 0)], dims[i], cfg.depths[i], cfg.num_heads[i],
                kernel_size=cfg.kernel_size,
                dilations=cfg.stage_dilations(i),
                downsample=cfg.downsample if i > 0 else None,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                layer_scale=cfg.layer_scale,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[start:start + cfg.depths[i]],
                norm_layer=norm_layer,
                **dd,
            ))
            start += cfg.depths[i]
            self.feature_info.append(dict(num_chs=dims[i], reduction=stem_stride * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features, **dd)
        self._init_head(num_classes, global_pool, drop_rate, dd)
        self.apply(init_weights)


class NatIsotropic(_NatBase):
    """Isotropic NAT / DiNAT / ViT-RPB: a patch stem and one sequence of blocks at a single resolution."""

    _isotropic = True

    def __init__(
            self,
            cfg: NatCfg,
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
            **kwargs,
    ):
        """
        Args:
            cfg: architecture (``isotropic=True``); fields can be overridden by keyword (``img_size=384``).
            in_chans: image channels.
            num_classes: classifier outputs (0: no classifier).
            global_pool: pooling of the head.
            drop_rate: dropout before the classifier.
            proj_drop_rate: dropout after attention projections and in MLPs.
            attn_drop_rate: attention dropout (ViT-RPB only; NA must have 0).
            drop_path_rate: stochastic depth, linear from 0 to this over the blocks.
            qkv_bias: bias in the ``qkv`` projections.
            qk_scale: logit scale override.
            norm_layer: channels-last norm (default ``nn.LayerNorm`` with eps 1e-5).
            device: device of the parameters.
            dtype: dtype of the parameters.
            **kwargs: ``NatCfg`` fields overriding ``cfg``.

        Raises:
            ValueError: an argument or config field outside its valid values, naming it.
            TypeError: a keyword that is neither an argument nor a ``NatCfg`` field.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        cfg = self._init_cfg(cfg, kwargs, in_chans, num_classes, drop_rate, drop_path_rate)
        norm_layer = _norm_layer(norm_layer)
        depth = cfg.depths[0]
        img_size = to_2tuple(cfg.img_size)
        grid_size = (img_size[0] // cfg.patch_size, img_size[1] // cfg.patch_size)
        if cfg.attn == 'global_rpb' and min(grid_size) < 1:
            raise ValueError(f'img_size must be at least patch_size={cfg.patch_size}, got img_size={cfg.img_size}')
        self.num_features = cfg.embed_dim
        self.grad_checkpointing = False

        reduction = self._init_stem(in_chans, norm_layer, dd)
        dilations = cfg.stage_dilations(0)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            NatBlock(
                cfg.embed_dim, cfg.num_heads[0],
                kernel_size=cfg.kernel_size,
                dilation=dilations[i],
                attn=cfg.attn,
                grid_size=grid_size,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                layer_scale=cfg.layer_scale,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                norm_layer=norm_layer,
                **dd,
            )
            for i in range(depth)
        ])
        self.feature_info = [
            dict(num_chs=cfg.embed_dim, reduction=reduction, module=f'blocks.{i}') for i in range(depth)]
        self.norm = norm_layer(self.num_features, **dd)
        self._init_head(num_classes, global_pool, drop_rate, dd)
        self.apply(init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r'^patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns block outputs.

        Args:
            x: ``[B, in_chans, H, W]`` images.
            indices: blocks to return: last n if int, all if None, these if a sequence (negative from the end).
            norm: apply the final norm to every returned intermediate.
            stop_early: stop after the last requested block.
            output_fmt: 'NCHW' or 'NHWC' for the intermediates.
            intermediates_only: return only the intermediates.

        Returns:
            The intermediates, or ``(final features [B, H, W, C], intermediates)``.
        """
        check_output_fmt(output_fmt)
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self.patch_embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
            if i in take_indices:
                intermediates.append(self._to_output_fmt(self.norm(x) if norm else x, output_fmt))
        if intermediates_only:
            return intermediates
        x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks (and norm / head) not needed for the ``indices`` intermediates; returns their indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> normed ``[B, ceil(H/p), ceil(W/p), embed_dim]``."""
        x = self.patch_embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official NAT / DiNAT / DiNAT_s / isotropic checkpoint to this module's layout.

    Accepts a plain state dict or one wrapped as ``{'model': ...}`` / ``{'state_dict': ...}``. A dict already in
    this layout (``stages.*`` / ``blocks.*`` / ``head.fc.*`` keys) is returned unchanged. Official keys are renamed:
    ``levels.i.blocks`` / ``layers.i.blocks`` -> ``stages.i.blocks``, ``levels.i.downsample`` / ``layers.i.downsample``
    -> ``stages.{i+1}.downsample``, isotropic ``layers.i`` -> ``blocks.i``, ``head`` -> ``head.fc``; ViT-RPB's derived
    ``relative_position_index`` buffers are dropped (recomputed here). Nothing else is dropped or reshaped.

    Raises:
        ValueError: the converted dict does not have exactly the model's keys and shapes (the classifier and the
            first conv excepted: timm's loader adapts them to ``num_classes`` / ``in_chans``).
    """
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith(('stages.', 'blocks.', 'head.fc.')) for k in state_dict):
        return state_dict
    if isinstance(model, NatIsotropic):
        if model.cfg.attn == 'global_rpb':
            state_dict = {
                k: v for k, v in state_dict.items()
                if not (k.startswith('layers.') and k.endswith('.attn.relative_position_index'))}
        rules = [(r'^layers\.(\d+)\.', r'blocks.\1.')]
    else:
        rules = [
            (r'^(?:levels|layers)\.(\d+)\.blocks\.', r'stages.\1.blocks.'),
            (r'^(?:levels|layers)\.(\d+)\.downsample\.', lambda m: f'stages.{int(m.group(1)) + 1}.downsample.'),
        ]
    rules.append((r'^head\.(weight|bias)$', r'head.fc.\1'))
    out = rename_keys(state_dict, rules)
    exempt = [r'^head\.fc\.']
    first_conv = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv')
    if first_conv:
        exempt.append('^' + re.escape(first_conv) + r'\.weight$')
    check_state_dict(out, model, exempt=exempt)
    return out


def _create_nat(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    cfg = model_cfgs[variant]
    if cfg.isotropic:
        model_cls = NatIsotropic
        out_indices = kwargs.pop('out_indices', 3)
    else:
        model_cls = Nat
        out_indices = kwargs.pop('out_indices', tuple(range(len(cfg.depths))))
    return build_model_with_cfg(
        model_cls, variant, pretrained,
        model_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _alternating(depths: Sequence[int], dilations: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    """Per stage, blocks alternating dilation 1 and the stage's dilation, starting with 1."""
    return tuple(tuple(1 if j % 2 == 0 else d for j in range(n)) for n, d in zip(depths, dilations))


def _nat(embed_dim, depths, num_heads, mlp_ratio, dilate=None, **kwargs) -> NatCfg:
    dilations = _alternating(depths, dilate) if dilate else None
    return NatCfg(embed_dim=embed_dim, depths=depths, num_heads=num_heads, mlp_ratio=mlp_ratio, dilations=dilations,
                  **kwargs)


def _dinat_s(embed_dim, depths, num_heads, dilate, mlp_ratio=4., **kwargs) -> NatCfg:
    return NatCfg(
        embed_dim=embed_dim, depths=depths, num_heads=num_heads, mlp_ratio=mlp_ratio,
        dilations=_alternating(depths, dilate), stem='patch', patch_size=4, downsample='merge', **kwargs)


def _iso(embed_dim, num_heads, depth=12, dilate=1, attn='na', patch_size=16, mlp_ratio=4., **kwargs) -> NatCfg:
    return NatCfg(
        embed_dim=embed_dim, depths=(depth,), num_heads=(num_heads,), mlp_ratio=mlp_ratio,
        dilations=_alternating((depth,), (dilate,)), stem='patch', patch_size=patch_size, attn=attn,
        isotropic=True, **kwargs)


_D224 = (8, 4, 2, 1)  # floor(stage resolution / 7) at 224 px: 56, 28, 14, 7 tokens
_D384 = (13, 6, 3, 1)  # at 384 px: 96, 48, 24, 12 tokens
_DEPTHS_S = (2, 2, 18, 2)

model_cfgs = dict(
    nat_mini=_nat(64, (3, 4, 6, 5), (2, 4, 8, 16), 3.),
    nat_tiny=_nat(64, (3, 4, 18, 5), (2, 4, 8, 16), 3.),
    nat_small=_nat(96, (3, 4, 18, 5), (3, 6, 12, 24), 2., layer_scale=1e-5),
    nat_base=_nat(128, (3, 4, 18, 5), (4, 8, 16, 32), 2., layer_scale=1e-5),

    dinat_mini=_nat(64, (3, 4, 6, 5), (2, 4, 8, 16), 3., _D224),
    dinat_tiny=_nat(64, (3, 4, 18, 5), (2, 4, 8, 16), 3., _D224),
    dinat_small=_nat(96, (3, 4, 18, 5), (3, 6, 12, 24), 2., _D224),
    dinat_base=_nat(128, (3, 4, 18, 5), (4, 8, 16, 32), 2., _D224, layer_scale=1e-5),
    dinat_large=_nat(192, (3, 4, 18, 5), (6, 12, 24, 48), 2., _D224),
    dinat_large_384=_nat(192, (3, 4, 18, 5), (6, 12, 24, 48), 2., _D384),
    # the 11x11 models keep the 224 px dilations at 384 px: floor(stage resolution / 11) gives the same numbers
    dinat_large_384_11x11=_nat(192, (3, 4, 18, 5), (6, 12, 24, 48), 2., _D224, kernel_size=11),
    dinat_large_in22k=_nat(192, (3, 4, 18, 5), (6, 12, 24, 48), 2., _D224),
    dinat_large_11x11_in22k=_nat(192, (3, 4, 18, 5), (6, 12, 24, 48), 2., _D224, kernel_size=11),

    dinat_s_tiny=_dinat_s(96, (2, 2, 6, 2), (3, 6, 12, 24), _D224),
    dinat_s_small=_dinat_s(96, _DEPTHS_S, (3, 6, 12, 24), _D224),
    dinat_s_base=_dinat_s(128, _DEPTHS_S, (4, 8, 16, 32), _D224),
    dinat_s_large=_dinat_s(192, _DEPTHS_S, (6, 12, 24, 48), _D224),
    dinat_s_large_384=_dinat_s(192, _DEPTHS_S, (6, 12, 24, 48), _D384),
    dinat_s_large_in22k=_dinat_s(192, _DEPTHS_S, (6, 12, 24, 48), _D224),

    nat_isotropic_small=_iso(384, 12),
    nat_isotropic_base=_iso(768, 24),
    dinat_isotropic_small=_iso(384, 12, dilate=2),
    dinat_isotropic_base=_iso(768, 24, dilate=2),
    vitrpb_small=_iso(384, 12, attn='global_rpb'),
    vitrpb_base=_iso(768, 24, attn='global_rpb'),

    # tiny variants for tests and the CPU demo (32x32 / 64x64 inputs); the late stages run padded NA
    nat_test=_nat(16, (2, 2, 2, 1), (1, 2, 4, 8), 2., kernel_size=3),
    dinat_test=_nat(16, (2, 2, 2, 1), (1, 2, 4, 8), 2., (2, 2, 2, 1), kernel_size=3),
    dinat_s_test=_dinat_s(16, (2, 1, 2, 1), (1, 2, 4, 8), (2, 2, 2, 1), mlp_ratio=2., kernel_size=3),
    nat_isotropic_test=_iso(64, 2, depth=4, patch_size=4, mlp_ratio=2., kernel_size=3),
    dinat_isotropic_test=_iso(64, 2, depth=4, dilate=2, patch_size=4, mlp_ratio=2., kernel_size=3),
    vitrpb_test=_iso(64, 2, depth=4, attn='global_rpb', patch_size=4, mlp_ratio=2., img_size=64),
)


_NAT_URL = 'https://shi-labs.com/projects/nat/checkpoints/CLS/'
_DINAT_URL = 'https://shi-labs.com/projects/dinat/checkpoints/'


def _cfg(url: str = '', **kwargs) -> Dict:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': .875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj.0',
        'classifier': 'head.fc',
        'license': 'mit',
        'origin_url': 'https://github.com/SHI-Labs/Neighborhood-Attention-Transformer',
        'paper_ids': 'arXiv:2204.07143',
        'paper_name': 'Neighborhood Attention Transformer',
        **kwargs,
    }


def _dinat_cfg(url: str = '', **kwargs) -> Dict:
    return _cfg(url, paper_ids='arXiv:2209.15001', paper_name='Dilated Neighborhood Attention Transformer', **kwargs)


def _dinat_s_cfg(url: str = '', **kwargs) -> Dict:
    return _dinat_cfg(url, first_conv='patch_embed.proj', **kwargs)


def _iso_cfg(url: str = '', **kwargs) -> Dict:
    return _dinat_cfg(url, **{'first_conv': 'patch_embed.proj', 'pool_size': (14, 14), **kwargs})


_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)
_IN22K = dict(num_classes=21841, notes=('ImageNet-22K head; 21841 classes assumed (not stated by the official code)',))
_DINAT_S_NOTE = dict(notes=('classification/DiNAT.md links the same file with "_1k_" in place of "_in1k_"',))
_TEST = dict(input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0)

default_cfgs = generate_default_cfgs({
    'nat_mini.in1k': _cfg(_NAT_URL + 'nat_mini.pth'),
    'nat_tiny.in1k': _cfg(_NAT_URL + 'nat_tiny.pth'),
    'nat_small.in1k': _cfg(_NAT_URL + 'nat_small.pth'),
    'nat_base.in1k': _cfg(_NAT_URL + 'nat_base.pth'),

    'dinat_mini.in1k': _dinat_cfg(_DINAT_URL + 'imagenet1k/dinat_mini_in1k_224.pth'),
    'dinat_tiny.in1k': _dinat_cfg(_DINAT_URL + 'imagenet1k/dinat_tiny_in1k_224.pth'),
    'dinat_small.in1k': _dinat_cfg(_DINAT_URL + 'imagenet1k/dinat_small_in1k_224.pth'),
    'dinat_base.in1k': _dinat_cfg(_DINAT_URL + 'imagenet1k/dinat_base_in1k_224.pth'),
    'dinat_large.in22k_ft_in1k': _dinat_cfg(_DINAT_URL + 'imagenet1k/dinat_large_in22k_in1k_224.pth'),
    'dinat_large_384.in22k_ft_in1k': _dinat_cfg(_DINAT_URL + 'imagenet1k/dinat_large_in22k_in1k_384.pth', **_384),
    'dinat_large_384_11x11.in22k_ft_in1k': _dinat_cfg(
        _DINAT_URL + 'imagenet1k/dinat_large_in22k_in1k_384_11x11.pth', **_384),
    'dinat_large_in22k.in22k': _dinat_cfg(_DINAT_URL + 'imagenet22k/dinat_large_in22k_224.pth', **_IN22K),
    'dinat_large_11x11_in22k.in22k': _dinat_cfg(
        _DINAT_URL + 'imagenet22k/dinat_large_in22k_224_11x11interp.pth', **_IN22K),

    'dinat_s_tiny.in1k': _dinat_s_cfg(_DINAT_URL + 'imagenet1k/dinat_s_tiny_in1k_224.pth', **_DINAT_S_NOTE),
    'dinat_s_small.in1k': _dinat_s_cfg(_DINAT_URL + 'imagenet1k/dinat_s_small_in1k_224.pth', **_DINAT_S_NOTE),
    'dinat_s_base.in1k': _dinat_s_cfg(_DINAT_URL + 'imagenet1k/dinat_s_base_in1k_224.pth', **_DINAT_S_NOTE),
    'dinat_s_large.in22k_ft_in1k': _dinat_s_cfg(
        _DINAT_URL + 'imagenet1k/dinat_s_large_in1k_224.pth', **_DINAT_S_NOTE),
    'dinat_s_large_384.in22k_ft_in1k': _dinat_s_cfg(
        _DINAT_URL + 'imagenet1k/dinat_s_large_in1k_384.pth', **_384, **_DINAT_S_NOTE),
    'dinat_s_large_in22k.in22k': _dinat_s_cfg(_DINAT_URL + 'imagenet22k/dinat_s_large_in22k_224.pth', **_IN22K),

    'nat_isotropic_small.in1k': _iso_cfg(_DINAT_URL + 'isotropic/nat_isotropic_small_in1k_224.pth'),
    'nat_isotropic_base.in1k': _iso_cfg(_DINAT_URL + 'isotropic/nat_isotropic_base_in1k_224.pth'),
    'dinat_isotropic_small.in1k': _iso_cfg(_DINAT_URL + 'isotropic/dinat_isotropic_small_in1k_224.pth'),
    'dinat_isotropic_base.in1k': _iso_cfg(_DINAT_URL + 'isotropic/dinat_isotropic_base_in1k_224.pth'),
    'vitrpb_small.in1k': _iso_cfg(_DINAT_URL + 'isotropic/vitrpb_small_in1k_224.pth', fixed_input_size=True),
    'vitrpb_base.in1k': _iso_cfg(_DINAT_URL + 'isotropic/vitrpb_base_in1k_224.pth', fixed_input_size=True),

    'nat_test': _cfg(**_TEST),
    'dinat_test': _dinat_cfg(**_TEST),
    'dinat_s_test': _dinat_s_cfg(**_TEST),
    'nat_isotropic_test': _iso_cfg(**dict(_TEST, pool_size=(8, 8))),
    'dinat_isotropic_test': _iso_cfg(**dict(_TEST, pool_size=(8, 8))),
    'vitrpb_test': _iso_cfg(**dict(_TEST, pool_size=(8, 8))),
})


@register_model
def nat_mini(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('nat_mini', pretrained=pretrained, **kwargs)


@register_model
def nat_tiny(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('nat_tiny', pretrained=pretrained, **kwargs)


@register_model
def nat_small(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('nat_small', pretrained=pretrained, **kwargs)


@register_model
def nat_base(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('nat_base', pretrained=pretrained, **kwargs)


@register_model
def dinat_mini(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_mini', pretrained=pretrained, **kwargs)


@register_model
def dinat_tiny(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_tiny', pretrained=pretrained, **kwargs)


@register_model
def dinat_small(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_small', pretrained=pretrained, **kwargs)


@register_model
def dinat_base(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_base', pretrained=pretrained, **kwargs)


@register_model
def dinat_large(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_large', pretrained=pretrained, **kwargs)


@register_model
def dinat_large_384(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_large_384', pretrained=pretrained, **kwargs)


@register_model
def dinat_large_384_11x11(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_large_384_11x11', pretrained=pretrained, **kwargs)


@register_model
def dinat_large_in22k(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_large_in22k', pretrained=pretrained, **kwargs)


@register_model
def dinat_large_11x11_in22k(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_large_11x11_in22k', pretrained=pretrained, **kwargs)


@register_model
def dinat_s_tiny(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_s_tiny', pretrained=pretrained, **kwargs)


@register_model
def dinat_s_small(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_s_small', pretrained=pretrained, **kwargs)


@register_model
def dinat_s_base(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_s_base', pretrained=pretrained, **kwargs)


@register_model
def dinat_s_large(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_s_large', pretrained=pretrained, **kwargs)


@register_model
def dinat_s_large_384(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_s_large_384', pretrained=pretrained, **kwargs)


@register_model
def dinat_s_large_in22k(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_s_large_in22k', pretrained=pretrained, **kwargs)


@register_model
def nat_isotropic_small(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat('nat_isotropic_small', pretrained=pretrained, **kwargs)


@register_model
def nat_isotropic_base(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat('nat_isotropic_base', pretrained=pretrained, **kwargs)


@register_model
def dinat_isotropic_small(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat('dinat_isotropic_small', pretrained=pretrained, **kwargs)


@register_model
def dinat_isotropic_base(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat('dinat_isotropic_base', pretrained=pretrained, **kwargs)


@register_model
def vitrpb_small(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat('vitrpb_small', pretrained=pretrained, **kwargs)


@register_model
def vitrpb_base(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat('vitrpb_base', pretrained=pretrained, **kwargs)


@register_model
def nat_test(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('nat_test', pretrained=pretrained, **kwargs)


@register_model
def dinat_test(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_test', pretrained=pretrained, **kwargs)


@register_model
def dinat_s_test(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_s_test', pretrained=pretrained, **kwargs)


@register_model
def nat_isotropic_test(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat('nat_isotropic_test', pretrained=pretrained, **kwargs)


@register_model
def dinat_isotropic_test(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat('dinat_isotropic_test', pretrained=pretrained, **kwargs)


@register_model
def vitrpb_test(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat('vitrpb_test', pretrained=pretrained, **kwargs)
