"""Flowformer image classifier: a four-stage vision transformer on flow attention.

Paper:
    `Flowformer: Linearizing Transformers with Conservation Flows` - https://arxiv.org/abs/2202.06258 (ICML 2022)

    @inproceedings{wu2022flowformer,
        title = {Flowformer: Linearizing Transformers with Conservation Flows},
        author = {Wu, Haixu and Wu, Jialong and Xu, Jiehui and Wang, Jianmin and Long, Mingsheng},
        booktitle = {International Conference on Machine Learning (ICML)},
        year = {2022},
    }

Architecture and released weights: https://github.com/thuml/Flowformer (MIT), ``Flowformer_CV/flowformer.py`` built
as ``Flowformer_CV/main.py`` does. This is an independent implementation on :class:`~zoo.layers.FlowAttention`
with the shared pre-norm block and patch embedding. ``flowformer_cv`` is the one released configuration (the name
follows the official folder; there are no size variants): dims 96, 192, 384, 768, depths 3, 3, 10, 3 (19 layers),
12 heads in every stage (head widths 8, 16, 32, 64), MLP ratio 4, LayerNorm eps 1e-6, 43,311,304 parameters and
6.892 GMACs at 224 px (measured on the official code; the README gives only the 80.6 % top-1).

* stem: conv4x4/s4 with no norm, plus a learned absolute ``pos_embed`` for the 56x56 stage-1 grid (added once);
  between stages conv2x2/s2 with no norm;
* block: ``x + attn(LN(x))``, ``x + gamma * MLP(LN(x))``: layer scale (init 1e-5) on the MLP branch only;
* head: LayerNorm, mean over tokens, Linear.

Notes:
    * Any input size runs, unlike the official model (fixed at its ``img_size``): ``pos_embed`` is resized
      bicubically to other grids (as timm's ``dynamic_img_size``), and sizes not divisible by the patch or by 2 are
      zero-padded on the right/bottom (ceil). At the size the model is built for, nothing changes.
    * Official keys are renamed by :func:`checkpoint_filter_fn` (``patch_embed.0.proj`` -> ``stem.proj``,
      ``pos_embed`` -> ``stem.pos_embed``, ``patch_embed.i.proj`` -> ``stages.i.downsample.proj``, ``blocks.i.j``
      -> ``stages.i.blocks.j``, ``gamma`` -> ``ls2.gamma``, ``head`` -> ``head.fc``); thop's ``total_ops`` /
      ``total_params`` entries that released checkpoints may carry are dropped, and ``pos_embed`` is resized when the
      model is built for another ``img_size``.
    * The released weights are in a Tsinghua cloud folder without per-file links, so the cfg has no URL; load a
      downloaded file with ``pretrained_cfg_overlay=dict(file=path)``.
    * ``drop_path_rate`` defaults to 0; the official training used 0.2.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Mlp, calculate_drop_path_rates, to_2tuple, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from zoo.layers import FlowAttention, PatchEmbedCl, PreNormBlockCl
from zoo.layers._checks import check_number
from zoo.layers.partition import is_exporting, pad_needed

from ._helpers import (
    StagedModelMixin,
    build_model,
    check_state_dict,
    checkpoint_pos_grid,
    init_weights,
    loader_adapted_keys,
    overlay_cfg_strict,
    rename_keys,
    unwrap_state_dict,
)

__all__ = ['FlowformerCfg', 'FlowformerStem', 'FlowformerDownsample', 'FlowformerStage', 'Flowformer']


@dataclass(frozen=True)
class FlowformerCfg:
    """Architecture of a Flowformer classifier.

    Attributes:
        embed_dims: channels of the four stages.
        depths: blocks per stage.
        num_heads: flow-attention heads in every stage.
        mlp_ratio: MLP hidden width over block width.
        layer_scale: init value of the MLP-branch layer scale (the attention branch has none).
        patch_size: stem patch (stride of stage 1).
    """
    embed_dims: Tuple[int, ...] = (96, 192, 384, 768)
    depths: Tuple[int, ...] = (3, 3, 10, 3)
    num_heads: int = 12
    mlp_ratio: float = 4.
    layer_scale: float = 1e-5
    patch_size: int = 4

    def __post_init__(self):
        n = len(self.depths)
        if n < 1 or any(d < 1 for d in self.depths):
            raise ValueError(f'depths must be a non-empty sequence of ints >= 1, got depths={self.depths}')
        if len(self.embed_dims) != n or any(c < 1 for c in self.embed_dims):
            raise ValueError(f'embed_dims must give one int >= 1 per stage ({n}), got embed_dims={self.embed_dims}')
        if not isinstance(self.num_heads, int):
            raise TypeError(f'num_heads must be one int for every stage (Flowformer), got num_heads={self.num_heads!r}')
        if self.num_heads < 1 or any(c % self.num_heads for c in self.embed_dims):
            raise ValueError(f'num_heads must divide every stage width {self.embed_dims}, got '
                             f'num_heads={self.num_heads}')
        check_number('mlp_ratio', self.mlp_ratio, 0, low_open=True)
        if not self.layer_scale > 0:
            raise ValueError(f'layer_scale must be > 0, got layer_scale={self.layer_scale}')
        if self.patch_size < 1:
            raise ValueError(f'patch_size must be >= 1, got patch_size={self.patch_size}')


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int], new_grid: Tuple[int, int]) -> torch.Tensor:
    """``[1, Gh*Gw, C]`` absolute position embedding resized bicubically to ``new_grid`` (computed in float32)."""
    if grid[0] == new_grid[0] and grid[1] == new_grid[1] and not is_exporting():  # exported: resized at any size
        return pos_embed
    C = pos_embed.shape[-1]
    x = pos_embed.reshape(1, grid[0], grid[1], C).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=[new_grid[0], new_grid[1]], mode='bicubic', align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, -1, C).to(pos_embed.dtype)


def _pad_to_patch(x: torch.Tensor, patch_size: Tuple[int, int]) -> torch.Tensor:
    """NCHW ``x`` zero-padded on the right/bottom to multiples of the patch (``PatchEmbedCl``'s padding: the
    subclasses below do not call ``super().forward``, which TorchScript cannot compile)."""
    pad_b = -x.shape[-2] % patch_size[0]
    pad_r = -x.shape[-1] % patch_size[1]
    if pad_needed(pad_b, pad_r):
        x = F.pad(x, (0, pad_r, 0, pad_b))
    return x


class FlowformerStem(PatchEmbedCl):
    """conv ``p x p`` / ``p`` without a norm, then the learned position embedding, channels-last out."""

    def __init__(
            self,
            patch_size: int = 4,
            in_chans: int = 3,
            embed_dim: int = 96,
            img_size: Union[int, Tuple[int, int]] = 224,
            device=None,
            dtype=None,
    ):
        """
        Args:
            patch_size: patch side (conv kernel and stride).
            in_chans: image channels.
            embed_dim: output channels.
            img_size: input size the ``pos_embed`` grid is made for (``img_size / patch_size``).
            device: device of the parameters.
            dtype: dtype of the parameters.
        """
        super().__init__(patch_size, in_chans, embed_dim, norm_layer=None, device=device, dtype=dtype)
        img_size = to_2tuple(img_size)
        self.grid_size = (math.ceil(img_size[0] / patch_size), math.ceil(img_size[1] / patch_size))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, ceil(H/p), ceil(W/p), embed_dim]``."""
        # contiguous channels-last memory: LayerNorm and the Linears read rows
        x = self.proj(_pad_to_patch(x, self.patch_size)).permute(0, 2, 3, 1).contiguous()
        B, H, W, C = x.shape
        pos = resize_pos_embed(self.pos_embed, self.grid_size, (H, W))
        return x + pos.reshape(1, H, W, C)


class FlowformerDownsample(PatchEmbedCl):
    """conv2x2/s2 without a norm, channels-last in and out (odd sizes zero-padded on the right/bottom)."""

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None):
        super().__init__(2, dim, out_dim, norm_layer=None, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, dim]`` -> ``[B, ceil(H/2), ceil(W/2), out_dim]``."""
        x = self.proj(_pad_to_patch(x.permute(0, 3, 1, 2), self.patch_size))
        return x.permute(0, 2, 3, 1).contiguous()


class FlowformerStage(nn.Module):
    """Optional conv2x2/s2 downsampler followed by flow-attention blocks; channels-last in and out."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            cfg: FlowformerCfg,
            downsample: bool = True,
            drop_path: Tuple[float, ...] = (),
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        drop_path = tuple(drop_path) or (0.,) * depth
        if len(drop_path) != depth:
            raise ValueError(f'drop_path must have depth={depth} entries, got drop_path={drop_path}')
        self.downsample = FlowformerDownsample(dim, out_dim, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            PreNormBlockCl(
                out_dim, FlowAttention, mlp_layer=Mlp,
                attn_kwargs=dict(num_heads=cfg.num_heads),
                mlp_ratio=cfg.mlp_ratio,
                init_values=(None, cfg.layer_scale),
                drop_path=drop_path[i],
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
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


class Flowformer(StagedModelMixin, nn.Module):
    """Flowformer classifier: a stride-4 patch stem with a position embedding and four flow-attention stages at
    strides 4, 8, 16, 32 (channels-last).

    ``forward_features`` maps ``[B, in_chans, H, W]`` to LayerNorm-ed ``[B, ceil(H/32), ceil(W/32), num_features]``;
    the classifier and feature interface come from :class:`StagedModelMixin`.
    """

    output_fmt = 'NHWC'
    stage_fmt = 'NHWC'
    stem_name = 'stem'

    def __init__(
            self,
            cfg: FlowformerCfg,
            img_size: Union[int, Tuple[int, int]] = 224,
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
            cfg: architecture; fields can be overridden by keyword (``depths=...``, ``num_heads=...``).
            img_size: input size the position embedding is made for (others are resized to at run time).
            in_chans: image channels.
            num_classes: classifier outputs (0: no classifier).
            global_pool: pooling of the head ('avg' as official, 'max', 'avgmax', '' ...).
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
            device: device of the parameters.
            dtype: dtype of the parameters.
            **kwargs: ``FlowformerCfg`` fields overriding ``cfg``.

        Raises:
            ValueError: an argument or config field outside its valid values, naming it.
            TypeError: a keyword that is neither an argument nor a ``FlowformerCfg`` field.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        cfg = overlay_cfg_strict(cfg, kwargs)
        self._init_args(in_chans, num_classes, drop_rate, drop_path_rate)
        if min(to_2tuple(img_size)) < 1:
            raise ValueError(f'img_size must be >= 1, got img_size={img_size}')
        self.cfg = cfg
        dims = cfg.embed_dims
        self.num_features = dims[-1]
        self.grad_checkpointing = False
        self.stem = FlowformerStem(cfg.patch_size, in_chans, dims[0], img_size, **dd)

        dpr = calculate_drop_path_rates(drop_path_rate, sum(cfg.depths))
        stages = []
        self.feature_info = []
        start = 0
        for i, depth in enumerate(cfg.depths):
            stages.append(FlowformerStage(
                dims[max(i - 1, 0)], dims[i], depth, cfg,
                downsample=i > 0,
                drop_path=dpr[start:start + depth],
                **dd,
            ))
            start += depth
            self.feature_info.append(dict(num_chs=dims[i], reduction=cfg.patch_size * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6, **dd)
        self._init_head(num_classes, global_pool, drop_rate, dd)
        if self.stem.pos_embed.device.type != 'meta':
            trunc_normal_(self.stem.pos_embed, std=.02)
        self.apply(init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """The position embedding (as official)."""
        return {'stem.pos_embed'}


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official Flowformer-CV checkpoint (``Flowformer_CV/flowformer.py`` keys) to this module's layout.

    Accepts a plain state dict or one wrapped as ``{'model': ...}`` / ``{'state_dict': ...}``. thop's
    ``total_ops`` / ``total_params`` entries are dropped. A dict already in this layout (``stem.*`` keys) keeps its
    names. In both, ``stem.pos_embed`` is resized bicubically when the model's grid differs.

    Raises:
        ValueError: the converted dict does not have exactly the model's keys and shapes (the classifier and the
            first conv excepted: the loaders adapt them to ``num_classes`` / ``in_chans``).
    """
    state_dict = {k: v for k, v in unwrap_state_dict(state_dict).items()
                  if not re.search(r'(^|\.)total_(ops|params)$', k)}
    if not any(k.startswith('stem.') for k in state_dict):
        rules = [
            (r'^pos_embed$', 'stem.pos_embed'),
            (r'^patch_embed\.0\.proj\.', 'stem.proj.'),
            (r'^patch_embed\.(\d+)\.proj\.', r'stages.\1.downsample.proj.'),
            (r'^blocks\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.'),
            (r'\.gamma$', '.ls2.gamma'),
            (r'^head\.(weight|bias)$', r'head.fc.\1'),
        ]
        state_dict = rename_keys(state_dict, rules)
    out = dict(state_dict)
    if isinstance(model, Flowformer) and 'stem.pos_embed' in out:
        side = checkpoint_pos_grid(out['stem.pos_embed'], model.stem.pos_embed)
        if side:
            out['stem.pos_embed'] = resize_pos_embed(out['stem.pos_embed'], (side, side), model.stem.grid_size)
    check_state_dict(out, model, exempt=loader_adapted_keys(model))
    return out


def _create_flowformer(variant: str, pretrained: bool = False, **kwargs) -> Flowformer:
    cfg = model_cfgs[variant]
    out_indices = kwargs.pop('out_indices', tuple(range(len(cfg.depths))))
    return build_model(
        Flowformer, variant, pretrained,
        model_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


model_cfgs = dict(
    flowformer_cv=FlowformerCfg(),
    # tiny variant for tests (32x32 inputs)
    flowformer_test=FlowformerCfg(embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=4, mlp_ratio=2.),
)


def _cfg(url: Any = '', **kwargs) -> Dict:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': .9,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.proj',
        'classifier': 'head.fc',
        'custom_load': True,  # files and URLs go through PretrainedFileMixin.load_pretrained
        'license': 'mit',
        'origin_url': 'https://github.com/thuml/Flowformer',
        'paper_ids': 'arXiv:2202.06258',
        'paper_name': 'Flowformer: Linearizing Transformers with Conservation Flows',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # released in https://cloud.tsinghua.edu.cn/d/82d93375f97f4ca58886/ (a folder, no file link)
    'flowformer_cv.in1k': _cfg(),
    'flowformer_test': _cfg(input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0),
})


@register_model
def flowformer_cv(pretrained: bool = False, **kwargs) -> Flowformer:
    return _create_flowformer('flowformer_cv', pretrained=pretrained, **kwargs)


@register_model
def flowformer_test(pretrained: bool = False, **kwargs) -> Flowformer:
    return _create_flowformer('flowformer_test', pretrained=pretrained, **kwargs)
