"""A PVT-v1-layout backbone whose attention is chosen per stage (Agent-PVT, InLine-PVT).

The Agent-PVT and InLine-PVT models of LeapLabTHU (``agent_transformer/models/agent_pvt.py``,
``InLine/models/inline_pvt.py``) are PVT-v1 with a different token mixer in the stages marked by the family letter of
an attention-type string. This module holds the shared backbone; each family supplies its attention layer through a
factory and renames its official keys with :func:`pvt_like_rename_rules` in its own ``checkpoint_filter_fn``.

Layout (official ``PyramidVisionTransformer``)::

    patch_embed (conv p x p + LN eps 1e-5)            = official patch_embed1
    stages.i:  downsample (conv 2x2/s2 + LN, i > 0)  = official patch_embed{i+1}
               pos_embed [1, N_i, C_i]                = official pos_embed{i+1} (N_i = stage tokens at img_size)
               blocks.j: x + attn(norm1(x)), x + mlp(norm2(x))  (LN eps 1e-6, timm Mlp, ratio mlp_ratios[i])
                                                      = official block{i+1}.j
    norm: nn.Identity (the Agent/InLine PVTs have **no final norm**; ``final_norm=True`` adds one)
    head: mean over tokens -> head.fc                 = official head

There is no class token: Agent-PVT and InLine-PVT dropped PVT-v1's stage-4 class token (their ``cls_token`` lines
are commented out), so this backbone has none either.

Attention-type string (official ``attn_type``): one letter per stage, the family letter (``attn_letter``: 'A' agent,
'I' InLine) or ``'S'`` for PVT's plain spatial-reduction attention (:class:`~zoo.layers.SpatialReductionAttentionCl`,
keys ``q``, ``kv``, ``sr``, ``norm``, ``proj`` as the official ``Attention``) with reduction ``sr_ratios[i]``. A family
layer's own reduction (official ``la_sr_ratios`` / ``agent_sr_ratios``, 1 for every released model) is the family's
business: pass it through ``family_kwargs``.

The ``attn_layer`` factory interface (shared with ``_swin_like`` and ``_deit_like``)::

    attn_layer(stage=s, index=i, dim=C, num_heads=h, resolution=(H, W),
               attn_drop=p_attn, proj_drop=p_proj, device=device, dtype=dtype, **family_kwargs) -> nn.Module

called once per family block (``index`` = block index inside stage ``s``); ``resolution`` is the stage map at the
model's ``img_size`` (every family block is global over its stage). The module maps channels-last
``[B, H, W, C] -> [B, H, W, C]`` for any ``H, W`` (other input sizes give other stage maps). Factories should accept
``**kwargs``.

Any input size: the stem and the stage patch embeds zero-pad to their stride (right / bottom), so stage ``i`` of an
``H x W`` image is ``ceil(H / 4 / 2^i)`` high; ``pos_embed`` is resampled bilinearly (``align_corners=False``, as the
official ``_get_pos_embed``) from the ``img_size`` grid to the input's grid. At sizes divisible by 32 this is the
official computation. Differences elsewhere: the official convs floor odd sizes (they drop the last row/column) where
we pad; and the official ``_get_pos_embed`` skips the resampling whenever a stage has as many tokens as stage 1 at
``img_size`` (it compares every stage with ``patch_embed1.num_patches``), which is wrong for non-square or later-stage
maps of that token count (e.g. a stage-2 map of 56 x 56 at 448 px fails there); here the resampling depends on the
grid only.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import calculate_drop_path_rates, register_notrace_function, to_2tuple, trunc_normal_
from timm.models import checkpoint_seq

from zoo.layers import PatchEmbedCl, PreNormBlockCl, SpatialReductionAttentionCl
from zoo.layers.partition import is_exporting

from ._helpers import StagedModelMixin, init_weights

__all__ = ['PvtLikeCfg', 'PvtLike', 'PvtLikeStage', 'resample_pos_embed_cl', 'add_pos_embed_cl',
           'pvt_like_rename_rules', 'PVT_PLAIN_LETTER']

PVT_PLAIN_LETTER = 'S'
AttnFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class PvtLikeCfg:
    """Architecture of a PVT-layout variant.

    Attributes:
        embed_dims: channels per stage.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        mlp_ratios: MLP hidden width over block width, per stage.
        sr_ratios: spatial reduction of the plain ``'S'`` stages (official ``sr_ratios``).
        attn_type: one letter per stage: the family letter or ``'S'`` (see the module docstring).
        patch_size: stride of the stem (later stages downsample by 2).
        img_size: input size of ``pos_embed`` and of the family layers' ``resolution``.
        qkv_bias: biases of the plain stages' ``q`` / ``kv`` (official: True for every PVT variant).
        final_norm: a LayerNorm (eps 1e-6) after the last stage (PVT-v1 has one; Agent/InLine-PVT do not).
        family_kwargs: hashable ``((key, value), ...)`` pairs passed to the family factory.
    """
    embed_dims: Tuple[int, ...] = (64, 128, 320, 512)
    depths: Tuple[int, ...] = (2, 2, 2, 2)
    num_heads: Tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: Tuple[float, ...] = (8, 8, 4, 4)
    sr_ratios: Tuple[int, ...] = (8, 4, 2, 1)
    attn_type: str = 'SSSS'
    patch_size: int = 4
    img_size: Union[int, Tuple[int, int]] = 224
    qkv_bias: bool = True
    final_norm: bool = False
    family_kwargs: Tuple[Tuple[str, object], ...] = ()

    def __post_init__(self):
        n = len(self.depths)
        if n < 1 or any(d < 1 for d in self.depths):
            raise ValueError(f'depths must be a non-empty sequence of ints >= 1, got depths={self.depths}')
        for name in ('embed_dims', 'num_heads', 'mlp_ratios', 'sr_ratios'):
            value = getattr(self, name)
            if len(value) != n:
                raise ValueError(f'{name} must give one value per stage ({n}), got {name}={value}')
        if any(c < 1 for c in self.embed_dims):
            raise ValueError(f'embed_dims must be ints >= 1, got embed_dims={self.embed_dims}')
        if any(h < 1 or c % h for c, h in zip(self.embed_dims, self.num_heads)):
            raise ValueError(f'num_heads must divide embed_dims={self.embed_dims}, got num_heads={self.num_heads}')
        if any(r <= 0 for r in self.mlp_ratios):
            raise ValueError(f'mlp_ratios must be > 0, got mlp_ratios={self.mlp_ratios}')
        if any(r < 1 for r in self.sr_ratios):
            raise ValueError(f'sr_ratios must be ints >= 1, got sr_ratios={self.sr_ratios}')
        if not isinstance(self.attn_type, str) or len(self.attn_type) != n:
            raise ValueError(f'attn_type must be a string of one letter per stage ({n}), '
                             f'got attn_type={self.attn_type!r}')
        if self.patch_size < 1:
            raise ValueError(f'patch_size must be >= 1, got patch_size={self.patch_size}')
        size = tuple(to_2tuple(self.img_size))
        if len(size) != 2 or any(int(s) < 1 for s in size):
            raise ValueError(f'img_size must be an int or (h, w) pair of ints >= 1, got img_size={self.img_size!r}')

    def resolutions(self) -> List[Tuple[int, int]]:
        """Stage map sizes at ``img_size`` (ceil division, as the padding patch embeds)."""
        h, w = (int(s) for s in to_2tuple(self.img_size))
        h, w = -(-h // self.patch_size), -(-w // self.patch_size)
        out = []
        for _ in self.depths:
            out.append((h, w))
            h, w = -(-h // 2), -(-w // 2)
        return out


def resample_pos_embed_cl(pos_embed: torch.Tensor, grid: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """``[1, gh * gw, C]`` position embedding of a ``grid`` -> ``[1, H, W, C]`` for a map of ``size``.

    Bilinear, ``align_corners=False`` (the official ``_get_pos_embed``); no resampling when ``size == grid``, except
    while ``torch.export`` traces (ONNX): resampling to the same grid is the identity, and a branch on the size
    would bake the traced size into the graph.
    """
    gh, gw = grid
    pos = pos_embed.reshape(1, gh, gw, -1)
    if size[0] == gh and size[1] == gw and not is_exporting():
        return pos
    pos = F.interpolate(pos.permute(0, 3, 1, 2), size=[size[0], size[1]], mode='bilinear', align_corners=False)
    return pos.permute(0, 2, 3, 1)


@register_notrace_function  # shape-dependent (resampling to the map): one opaque node under FX
def add_pos_embed_cl(x: torch.Tensor, pos_embed: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """``x + pos_embed`` for a ``[B, H, W, C]`` map, ``pos_embed`` (of a ``grid``) resampled to ``(H, W)`` by
    :func:`resample_pos_embed_cl`."""
    return x + resample_pos_embed_cl(pos_embed, grid, (x.shape[1], x.shape[2]))


class PvtLikeStage(nn.Module):
    """Optional patch embed (conv 2x2/s2 + LN), add the stage's ``pos_embed``, then the blocks."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            stage: int,
            num_heads: int,
            depth: int,
            resolution: Tuple[int, int],
            attn_layer: Optional[AttnFactory],
            sr_ratio: int = 1,
            downsample: bool = True,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            pos_drop: float = 0.,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: Tuple[float, ...] = (),
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
            family_kwargs: Optional[dict] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_dim: channels of the previous stage.
            dim: channels of this stage.
            stage: stage index (passed to the factory).
            num_heads: attention heads.
            depth: blocks.
            resolution: stage map at ``img_size`` (size of ``pos_embed``; the factory's ``resolution``).
            attn_layer: family factory, or None for PVT's plain SRA blocks.
            sr_ratio: reduction of the plain SRA blocks.
            downsample: start with a 2x2/s2 patch embed (False: the stage follows the model's stem).
            mlp_ratio: MLP hidden width over ``dim``.
            qkv_bias: biases of the plain blocks' ``q`` / ``kv``.
            pos_drop: dropout after adding ``pos_embed``.
            proj_drop: dropout after projections and in MLPs.
            attn_drop: attention dropout.
            drop_path: stochastic depth per block.
            norm_layer: block norm (official eps 1e-6).
            family_kwargs: extra keywords of the family factory.
            device: device of the parameters.
            dtype: dtype of the parameters.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        drop_path = tuple(drop_path) or (0.,) * depth
        self.resolution: Tuple[int, int] = (int(resolution[0]), int(resolution[1]))
        self.has_downsample = downsample
        self.downsample = PatchEmbedCl(2, in_dim, dim, norm_layer=nn.LayerNorm, **dd) if downsample \
            else nn.Identity()
        self.pos_embed = nn.Parameter(torch.zeros(1, self.resolution[0] * self.resolution[1], dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop)
        blocks = []
        for i in range(depth):
            if attn_layer is None:
                attn = SpatialReductionAttentionCl(
                    dim, num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                    **dd)
            else:
                attn = attn_layer(stage=stage, index=i, dim=dim, num_heads=num_heads, resolution=self.resolution,
                                  attn_drop=attn_drop, proj_drop=proj_drop, **(family_kwargs or {}), **dd)
                if not isinstance(attn, nn.Module):
                    raise TypeError(f'attn_layer must return an nn.Module, got {type(attn).__name__}')
            blocks.append(PreNormBlockCl(
                dim, attn_layer=attn, mlp_ratio=mlp_ratio, drop_path=drop_path[i], proj_drop=proj_drop,
                norm_layer=norm_layer, **dd))
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, in_dim]`` -> ``[B, H', W', dim]`` (``H' = ceil(H / 2)`` with a downsample)."""
        if self.has_downsample:
            x = self.downsample(x.permute(0, 3, 1, 2))
        x = self.pos_drop(add_pos_embed_cl(x, self.pos_embed, self.resolution))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class PvtLike(StagedModelMixin, nn.Module):
    """PVT-v1-layout model with a family attention (see the module docstring): four stages at strides 4, 8, 16, 32,
    channels-last features; the classifier and feature interface of :class:`~zoo.models._helpers.StagedModelMixin`."""

    output_fmt = 'NHWC'
    stage_fmt = 'NHWC'
    stem_name = 'patch_embed'

    def __init__(
            self,
            cfg: PvtLikeCfg,
            attn_layer: AttnFactory,
            attn_letter: str,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
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
            global_pool: head pooling ('avg' as the official token mean, 'max', '' ...).
            drop_rate: dropout before the classifier.
            pos_drop_rate: dropout after adding each stage's ``pos_embed`` (official ``drop_rate`` there).
            proj_drop_rate: dropout after projections and in MLPs.
            attn_drop_rate: attention dropout.
            drop_path_rate: stochastic depth, linear from 0 over all blocks.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument or config field outside its valid values, naming it.
            TypeError: ``attn_layer`` is not callable.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self._init_args(in_chans, num_classes, drop_rate, drop_path_rate)
        if not callable(attn_layer):
            raise TypeError(f'attn_layer must be a callable returning an nn.Module, got {attn_layer!r}')
        if not (isinstance(attn_letter, str) and len(attn_letter) == 1 and attn_letter != PVT_PLAIN_LETTER):
            raise ValueError(f"attn_letter must be one letter other than 'S', got attn_letter={attn_letter!r}")
        allowed = (attn_letter, PVT_PLAIN_LETTER)
        if any(c not in allowed for c in cfg.attn_type):
            raise ValueError(f'attn_type letters must be in {allowed}, got attn_type={cfg.attn_type!r}')
        for name, p in (('pos_drop_rate', pos_drop_rate), ('proj_drop_rate', proj_drop_rate),
                        ('attn_drop_rate', attn_drop_rate)):
            if not 0. <= p < 1.:
                raise ValueError(f'{name} must be in [0, 1), got {name}={p}')
        self.cfg = cfg
        dims = cfg.embed_dims
        self.num_features = dims[-1]
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbedCl(cfg.patch_size, in_chans, dims[0], norm_layer=nn.LayerNorm, **dd)
        resolutions = cfg.resolutions()
        family_kwargs = dict(cfg.family_kwargs)
        dpr = calculate_drop_path_rates(drop_path_rate, sum(cfg.depths))
        stages, start = [], 0
        self.feature_info = []
        for i, depth in enumerate(cfg.depths):
            family = cfg.attn_type[i] == attn_letter
            stages.append(PvtLikeStage(
                dims[max(i - 1, 0)], dims[i], i, cfg.num_heads[i], depth, resolutions[i],
                attn_layer if family else None, sr_ratio=cfg.sr_ratios[i], downsample=i > 0,
                mlp_ratio=cfg.mlp_ratios[i], qkv_bias=cfg.qkv_bias, pos_drop=pos_drop_rate, proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, drop_path=dpr[start:start + depth],
                family_kwargs=family_kwargs if family else None, **dd))
            start += depth
            self.feature_info.append(dict(num_chs=dims[i], reduction=cfg.patch_size * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6, **dd) if cfg.final_norm else nn.Identity()
        self._init_head(num_classes, global_pool, drop_rate, dd)
        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=.02)
        self.apply(init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Nothing: the official PVTs return ``{'cls_token'}`` (which they do not have), so ``pos_embed`` is decayed."""
        return set()


def pvt_like_rename_rules() -> List[Tuple[str, Union[str, Callable]]]:
    """Official PVT keys -> this backbone's: ``patch_embed1`` -> ``patch_embed``, ``patch_embed{i+1}`` ->
    ``stages.i.downsample``, ``pos_embed{i+1}`` -> ``stages.i.pos_embed``, ``block{i+1}.j`` -> ``stages.i.blocks.j``,
    ``head`` -> ``head.fc``. Attention keys inside the blocks are the family's (plain blocks: unchanged)."""
    return [
        (r'^patch_embed1\.', 'patch_embed.'),
        (r'^patch_embed(\d+)\.', lambda m: f'stages.{int(m.group(1)) - 1}.downsample.'),
        (r'^pos_embed(\d+)$', lambda m: f'stages.{int(m.group(1)) - 1}.pos_embed'),
        (r'^block(\d+)\.', lambda m: f'stages.{int(m.group(1)) - 1}.blocks.'),
        (r'^head\.(weight|bias)$', r'head.fc.\1'),
    ]
