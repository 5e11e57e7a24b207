"""Neighborhood Attention Transformer (NAT), Dilated NAT (DiNAT) and DiNAT_s.

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

Families, all with pre-norm blocks ``x + NA(LN(x))``, ``x + MLP(LN(x))`` (:class:`~zoo.layers.PreNormBlockCl` with
:class:`~zoo.layers.NeighborhoodAttention2d`; optional layer scale, the official ``gamma1/gamma2``) and a head of
LN -> mean over tokens -> Linear:

* NAT / DiNAT: conv stem (two 3x3 stride-2 convs + LN), 4 stages joined by conv3x3/s2 downsamplers; DiNAT alternates
  dilation 1 and ``floor(stage_res / kernel)`` (at the 224 px training size) inside each stage.
* DiNAT_s: Swin layout (4x4 patch stem, patch merging), mlp ratio 4, NA and DiNA alternating.
* Isotropic NAT / DiNAT / ViT-RPB live in :mod:`zoo.models.nat_isotropic` (same ``NatCfg``, stem and filter).

Notes:
    * Any input size works: the stems and patch merging pad right/bottom to their stride, and a token map smaller
      than ``kernel_size * dilation`` is padded before the NA ``qkv`` projection and cropped after it, as the
      NATTEN <= 0.15 modules the checkpoints were trained with did.
    * Parameter names follow the official ones except for the container path (``levels.i`` / ``layers.i`` ->
      ``stages.i``, the downsampler moved to the start of the next stage as in timm's Swin), the layer scale
      (``gamma1/2`` -> timm's ``ls1/2.gamma``) and ``head`` -> ``head.fc``; :func:`checkpoint_filter_fn` converts
      official checkpoints by key renames only.
    * ``drop_path_rate`` defaults to 0; the official trainings used 0.2 (mini/tiny), 0.3 (small), 0.5 (base),
      0.35 (large; 0.2 for the ImageNet-22K pre-training).
    * Pretrained cfgs point ``url`` at the official checkpoint files (plain state dicts, converted on load by
      :func:`checkpoint_filter_fn`). ``pretrained=True`` without ``pretrained_cfg_overlay=dict(file=...)`` downloads
      from shi-labs.com. The ImageNet-22K heads are assumed to have 21841 classes (the official code does not say).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import calculate_drop_path_rates
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from zoo.layers import (
    ConvDownsampleCl,
    ConvStemCl,
    NeighborhoodAttention2d,
    PatchEmbedCl,
    PatchMergingCl,
    PreNormBlockCl,
)
from zoo.layers._checks import check_number

from ._helpers import (
    ClassifierMixin,
    StagedModelMixin,
    build_model,
    check_state_dict,
    init_weights,
    loader_adapted_keys,
    overlay_cfg_strict,
    rename_keys,
    unwrap_state_dict,
)

__all__ = ['NatCfg', 'NatStage', 'Nat', 'checkpoint_filter_fn']

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
        layer_scale: init value of the per-channel residual scales (``ls1/ls2.gamma``, the official
            ``gamma1/gamma2``), or None for none.
        stem: 'conv' (two 3x3 stride-2 convs, NAT/DiNAT) or 'patch' (one ``patch_size`` conv).
        patch_size: stride of the 'patch' stem.
        downsample: 'conv' (conv3x3/s2, NAT/DiNAT) or 'merge' (Swin patch merging, DiNAT_s) between stages.
        attn: 'na' (neighborhood attention) or 'global_rpb' (global attention with relative bias, ViT-RPB).
        isotropic: one resolution, no downsampling (:class:`~zoo.models.nat_isotropic.NatIsotropic`).
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
        check_number('mlp_ratio', self.mlp_ratio, 0, low_open=True)
        if self.patch_size < 1:
            raise ValueError(f'patch_size must be >= 1, got patch_size={self.patch_size}')

    def stage_dilations(self, stage: int) -> Tuple[int, ...]:
        if self.dilations is None:
            return (1,) * self.depths[stage]
        return tuple(self.dilations[stage])


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
            PreNormBlockCl(
                out_dim,
                attn_layer=NeighborhoodAttention2d,
                attn_kwargs=dict(
                    num_heads=num_heads, kernel_size=kernel_size, dilation=dilations[i], qkv_bias=qkv_bias,
                    qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=proj_drop),
                mlp_ratio=mlp_ratio,
                init_values=layer_scale,
                drop_path=drop_path[i],
                proj_drop=proj_drop,
                norm_layer=norm_layer,
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
        cfg = overlay_cfg_strict(cfg, kwargs)
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


# layer scale: the official ``gamma1`` / ``gamma2`` (and this module's names before the shared block) -> timm's names
_LAYER_SCALE_RULES = [(r'\.gamma([12])$', r'.ls\1.gamma')]


def _convert_checkpoint(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        rules: List[Tuple[str, Union[str, Callable]]],
) -> Dict[str, torch.Tensor]:
    """Unwrap, rename official keys by ``rules`` (plus the head and the layer scales) and check the result against
    ``model``; a dict already in this layout gets the layer-scale renames only."""
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith(('stages.', 'blocks.', 'head.fc.')) for k in state_dict):
        out = rename_keys(state_dict, _LAYER_SCALE_RULES)
    else:
        out = rename_keys(state_dict, [*rules, (r'^head\.(weight|bias)$', r'head.fc.\1'), *_LAYER_SCALE_RULES])
    check_state_dict(out, model, exempt=loader_adapted_keys(model))
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official NAT / DiNAT / DiNAT_s checkpoint to this module's layout.

    Accepts a plain state dict or one wrapped as ``{'model': ...}`` / ``{'state_dict': ...}``. A dict already in
    this layout (``stages.*`` / ``blocks.*`` / ``head.fc.*`` keys) is returned with only the layer-scale renames of
    earlier native exports. Official keys are renamed: ``levels.i.blocks`` / ``layers.i.blocks`` ->
    ``stages.i.blocks``, ``levels.i.downsample`` / ``layers.i.downsample`` -> ``stages.{i+1}.downsample``,
    ``gamma1`` / ``gamma2`` -> ``ls1.gamma`` / ``ls2.gamma``, ``head`` -> ``head.fc``. Nothing is dropped or
    reshaped. Given an isotropic model, it defers to :func:`zoo.models.nat_isotropic.checkpoint_filter_fn`, so this
    one function converts every classification checkpoint of the official NAT repository.

    Raises:
        ValueError: the converted dict does not have exactly the model's keys and shapes (the classifier and the
            first conv excepted: timm's loader adapts them to ``num_classes`` / ``in_chans``).
    """
    if getattr(getattr(model, 'cfg', None), 'isotropic', False):
        from .nat_isotropic import checkpoint_filter_fn as isotropic_filter_fn  # that module imports this one
        return isotropic_filter_fn(state_dict, model)
    rules = [
        (r'^(?:levels|layers)\.(\d+)\.blocks\.', r'stages.\1.blocks.'),
        (r'^(?:levels|layers)\.(\d+)\.downsample\.', lambda m: f'stages.{int(m.group(1)) + 1}.downsample.'),
    ]
    return _convert_checkpoint(state_dict, model, rules)


def _create_nat(variant: str, pretrained: bool = False, **kwargs) -> Nat:
    cfg = model_cfgs[variant]
    out_indices = kwargs.pop('out_indices', tuple(range(len(cfg.depths))))
    return build_model(
        Nat, variant, pretrained,
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

    # tiny variants for tests and the CPU demo (32x32 / 64x64 inputs); the late stages run padded NA
    nat_test=_nat(16, (2, 2, 2, 1), (1, 2, 4, 8), 2., kernel_size=3),
    dinat_test=_nat(16, (2, 2, 2, 1), (1, 2, 4, 8), 2., (2, 2, 2, 1), kernel_size=3),
    dinat_s_test=_dinat_s(16, (2, 1, 2, 1), (1, 2, 4, 8), (2, 2, 2, 1), mlp_ratio=2., kernel_size=3),
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
        'custom_load': True,  # files and URLs go through PretrainedFileMixin.load_pretrained
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


    'nat_test': _cfg(**_TEST),
    'dinat_test': _dinat_cfg(**_TEST),
    'dinat_s_test': _dinat_s_cfg(**_TEST),
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
def nat_test(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('nat_test', pretrained=pretrained, **kwargs)


@register_model
def dinat_test(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_test', pretrained=pretrained, **kwargs)


@register_model
def dinat_s_test(pretrained: bool = False, **kwargs) -> Nat:
    return _create_nat('dinat_s_test', pretrained=pretrained, **kwargs)



