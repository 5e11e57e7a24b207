"""Isotropic NAT / DiNAT and the ViT-RPB baseline of the DiNAT paper.

Paper:
    `Dilated Neighborhood Attention Transformer` - https://arxiv.org/abs/2209.15001

    @article{hassani2022dilated,
        title = {Dilated Neighborhood Attention Transformer},
        author = {Hassani, Ali and Shi, Humphrey},
        journal = {arXiv preprint arXiv:2209.15001},
        year = {2022},
    }

Architecture and released weights: https://github.com/SHI-Labs/Neighborhood-Attention-Transformer (MIT),
``classification/isotropic.py``. A 16x16 patch stem (conv + LN, no class token, no absolute position embedding),
12 pre-norm blocks (:class:`~zoo.layers.PreNormBlockCl`) at one resolution, LN -> mean over tokens -> Linear:

* ``nat_isotropic_*``: neighborhood attention (k7, dilation 1) in every block;
* ``dinat_isotropic_*``: NA and DiNA alternating (dilation 1 on even, 2 on odd blocks);
* ``vitrpb_*``: global attention with the NAT-style relative bias table (:class:`~zoo.layers.RpbAttention2d`).

The configs are :class:`~zoo.models.nat.NatCfg` entries with ``isotropic=True``; the stem, constructor checks and
classifier come from the hierarchical NAT models (:mod:`zoo.models.nat`) and the feature interface (ViT-like: the
final norm applies to every intermediate asked for) from :class:`~zoo.models._helpers.IsotropicModelMixin`.

Notes:
    * NA models take any input size (see :mod:`zoo.models.nat`); ViT-RPB any token grid up to its
      ``ceil(img_size / patch_size)`` bias table (the official model is fixed to 14x14 tokens).
    * Parameter names follow the official ones except ``layers.i`` -> ``blocks.i``, ``gamma1/2`` ->
      ``ls1/2.gamma`` and ``head`` -> ``head.fc``; :func:`checkpoint_filter_fn` converts official checkpoints by key
      renames and drops ViT-RPB's derived ``relative_position_index`` buffers.
    * ``drop_path_rate`` defaults to 0; the official trainings used 0.1 (small) and 0.4 (base).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from timm.layers import calculate_drop_path_rates, to_2tuple
from timm.models import generate_default_cfgs, register_model

from zoo.layers import NeighborhoodAttention2d, PreNormBlockCl, RpbAttention2d

from ._helpers import IsotropicModelMixin, build_model, init_weights, unwrap_state_dict
from .nat import _DINAT_URL, _TEST, NatCfg, _alternating, _convert_checkpoint, _dinat_cfg, _NatBase, _norm_layer

__all__ = ['NatIsotropic']


class NatIsotropic(_NatBase, IsotropicModelMixin):
    """Isotropic NAT / DiNAT / ViT-RPB: a patch stem and one sequence of blocks at a single resolution.

    ``forward_features`` maps ``[B, in_chans, H, W]`` to normed ``[B, ceil(H/p), ceil(W/p), embed_dim]``;
    ``forward_intermediates`` / ``features_only`` return block outputs (NCHW by default).
    """

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
        # the patch stem pads to its stride: a table for img_size covers the padded token grid
        grid_size = (-(-img_size[0] // cfg.patch_size), -(-img_size[1] // cfg.patch_size))
        if cfg.attn == 'global_rpb' and min(grid_size) < 1:
            raise ValueError(f'img_size must be >= 1, got img_size={cfg.img_size}')
        self.num_features = cfg.embed_dim
        self.grad_checkpointing = False

        reduction = self._init_stem(in_chans, norm_layer, dd)
        dilations = cfg.stage_dilations(0)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        attn_kwargs = dict(
            num_heads=cfg.num_heads[0], qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop_rate,
            proj_drop=proj_drop_rate)
        if cfg.attn == 'na':
            attn_layer = NeighborhoodAttention2d
            block_kwargs = [dict(attn_kwargs, kernel_size=cfg.kernel_size, dilation=d) for d in dilations]
        else:
            attn_layer = RpbAttention2d
            block_kwargs = [dict(attn_kwargs, grid_size=grid_size)] * depth
        self.blocks = nn.Sequential(*[
            PreNormBlockCl(
                cfg.embed_dim,
                attn_layer=attn_layer,
                attn_kwargs=block_kwargs[i],
                mlp_ratio=cfg.mlp_ratio,
                init_values=cfg.layer_scale,
                drop_path=dpr[i],
                proj_drop=proj_drop_rate,
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


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official isotropic NAT / DiNAT / ViT-RPB checkpoint to this module's layout.

    Accepts a plain state dict or one wrapped as ``{'model': ...}`` / ``{'state_dict': ...}``. A dict already in
    this layout (``blocks.*`` / ``head.fc.*`` keys) is returned with only the layer-scale renames of earlier native
    exports. Official keys are renamed: ``layers.i`` -> ``blocks.i``, ``gamma1`` / ``gamma2`` -> ``ls1.gamma`` /
    ``ls2.gamma``, ``head`` -> ``head.fc``; ViT-RPB's derived ``relative_position_index`` buffers are dropped
    (recomputed here). Nothing else is dropped or reshaped.

    Raises:
        ValueError: the converted dict does not have exactly the model's keys and shapes (the classifier and the
            first conv excepted: timm's loader adapts them to ``num_classes`` / ``in_chans``).
    """
    state_dict = unwrap_state_dict(state_dict)
    if getattr(getattr(model, 'cfg', None), 'attn', None) == 'global_rpb':
        state_dict = {
            k: v for k, v in state_dict.items()
            if not (k.startswith('layers.') and k.endswith('.attn.relative_position_index'))}
    return _convert_checkpoint(state_dict, model, [(r'^layers\.(\d+)\.', r'blocks.\1.')])


def _create_nat_isotropic(variant: str, pretrained: bool = False, **kwargs) -> NatIsotropic:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model(
        NatIsotropic, variant, pretrained,
        model_cfg=model_cfgs[variant],
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _iso(embed_dim, num_heads, depth=12, dilate=1, attn='na', patch_size=16, mlp_ratio=4., **kwargs) -> NatCfg:
    return NatCfg(
        embed_dim=embed_dim, depths=(depth,), num_heads=(num_heads,), mlp_ratio=mlp_ratio,
        dilations=_alternating((depth,), (dilate,)), stem='patch', patch_size=patch_size, attn=attn,
        isotropic=True, **kwargs)


model_cfgs = dict(
    nat_isotropic_small=_iso(384, 12),
    nat_isotropic_base=_iso(768, 24),
    dinat_isotropic_small=_iso(384, 12, dilate=2),
    dinat_isotropic_base=_iso(768, 24, dilate=2),
    vitrpb_small=_iso(384, 12, attn='global_rpb'),
    vitrpb_base=_iso(768, 24, attn='global_rpb'),

    # tiny variants for tests and the CPU demo (32x32 / 64x64 inputs)
    nat_isotropic_test=_iso(64, 2, depth=4, patch_size=4, mlp_ratio=2., kernel_size=3),
    dinat_isotropic_test=_iso(64, 2, depth=4, dilate=2, patch_size=4, mlp_ratio=2., kernel_size=3),
    vitrpb_test=_iso(64, 2, depth=4, attn='global_rpb', patch_size=4, mlp_ratio=2., img_size=64),
)


def _cfg(url: str = '', **kwargs) -> Dict:
    return _dinat_cfg(url, **{'first_conv': 'patch_embed.proj', 'pool_size': (14, 14), **kwargs})


_URL = _DINAT_URL + 'isotropic/'
_TEST_CFG = dict(_TEST, pool_size=(8, 8))

default_cfgs = generate_default_cfgs({
    'nat_isotropic_small.in1k': _cfg(_URL + 'nat_isotropic_small_in1k_224.pth'),
    'nat_isotropic_base.in1k': _cfg(_URL + 'nat_isotropic_base_in1k_224.pth'),
    'dinat_isotropic_small.in1k': _cfg(_URL + 'dinat_isotropic_small_in1k_224.pth'),
    'dinat_isotropic_base.in1k': _cfg(_URL + 'dinat_isotropic_base_in1k_224.pth'),
    'vitrpb_small.in1k': _cfg(_URL + 'vitrpb_small_in1k_224.pth', fixed_input_size=True),
    'vitrpb_base.in1k': _cfg(_URL + 'vitrpb_base_in1k_224.pth', fixed_input_size=True),

    'nat_isotropic_test': _cfg(**_TEST_CFG),
    'dinat_isotropic_test': _cfg(**_TEST_CFG),
    # fixed to the 64 px its bias table is built for (as vitrpb_small / base to 224 px)
    'vitrpb_test': _cfg(**dict(_TEST_CFG, input_size=(3, 64, 64), pool_size=(16, 16)), fixed_input_size=True),
})


@register_model
def nat_isotropic_small(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat_isotropic('nat_isotropic_small', pretrained=pretrained, **kwargs)


@register_model
def nat_isotropic_base(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat_isotropic('nat_isotropic_base', pretrained=pretrained, **kwargs)


@register_model
def dinat_isotropic_small(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat_isotropic('dinat_isotropic_small', pretrained=pretrained, **kwargs)


@register_model
def dinat_isotropic_base(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat_isotropic('dinat_isotropic_base', pretrained=pretrained, **kwargs)


@register_model
def vitrpb_small(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat_isotropic('vitrpb_small', pretrained=pretrained, **kwargs)


@register_model
def vitrpb_base(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat_isotropic('vitrpb_base', pretrained=pretrained, **kwargs)


@register_model
def nat_isotropic_test(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat_isotropic('nat_isotropic_test', pretrained=pretrained, **kwargs)


@register_model
def dinat_isotropic_test(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat_isotropic('dinat_isotropic_test', pretrained=pretrained, **kwargs)


@register_model
def vitrpb_test(pretrained: bool = False, **kwargs) -> NatIsotropic:
    return _create_nat_isotropic('vitrpb_test', pretrained=pretrained, **kwargs)
