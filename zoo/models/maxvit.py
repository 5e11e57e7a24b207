"""MaxViT: Multi-Axis Vision Transformer, built from the zoo's shared blocks; loads timm's ``maxvit_*_tf`` weights.

Paper:
    `MaxViT: Multi-Axis Vision Transformer` - https://arxiv.org/abs/2204.01697 (ECCV 2022)

    @inproceedings{tu2022maxvit,
        title = {MaxViT: Multi-Axis Vision Transformer},
        author = {Tu, Zhengzhong and Talebi, Hossein and Zhang, Han and Yang, Feng and Milanfar, Peyman and
                  Bovik, Alan and Li, Yinxiao},
        booktitle = {European Conference on Computer Vision (ECCV)},
        year = {2022},
    }

Architecture: https://github.com/google-research/maxvit (Apache-2.0, TensorFlow). The reference here is timm's
PyTorch port of the TF weights (``timm/models/maxxvit.py``, ``maxvit_{tiny,small,base,large,xlarge}_tf_{224,384,512}``):
our models load timm's state dicts and reproduce its logits wherever timm runs.

Layout (NCHW between blocks): stem conv3x3/s2 -> BN-GELU -> conv3x3; four stages at strides 4, 8, 16, 32, each a
stack of MaxViT blocks; head avg-pool -> LayerNorm2d -> Linear -> tanh -> Linear (timm's ``NormMlpClassifierHead``).
A MaxViT block is

* :class:`~zoo.layers.MbConvBlock2d` (pre-norm MBConv with squeeze-excite; stride 2 in a stage's first block),
* block attention: :class:`~zoo.layers.PreNormBlockCl` around a ``'block'`` :class:`~zoo.layers.PartitionAttentionCl`
  (windows of ``window_size`` contiguous tokens),
* grid attention: the same with a ``'grid'`` partition (``grid_size`` tokens strided over the whole map),

with MaxViT's TF relative position bias (:class:`~zoo.layers.RelPosBiasTf`), head dim 32, GELU-tanh, BN eps 1e-3,
LN eps 1e-5 and TF 'same' padding. Window = grid = training resolution / 32 (7, 12, 16 at 224, 384, 512), so the
bias tables, and the parameter counts, depend on the resolution.

Names: ``maxvit_zoo_{tiny,small,base,large,xlarge}_{224,384,512}`` (timm's ``maxvit_<size>_tf_<res>`` with ``tf``
replaced by a ``zoo`` prefix, so nothing shadows timm) and ``maxvit_zoo_test`` (a tiny variant for tests).

Notes:
    * Any input size. timm's port needs every stage map divisible by the window and grid (224 px multiples for
      ``_224``); here a map the window (grid) does not divide is padded inside the attention and the padded tokens
      are masked out as keys, and a map smaller than the window is attended as one window (see
      :mod:`zoo.layers.partition_attention`). Where timm runs, both compute the same thing. The convs use TF's
      'same' padding, so stage ``i`` has ``ceil(H / 2 ** (i + 2))`` rows.
    * ``img_size`` is optional: given, window and grid become ``img_size // 32`` per axis, as
      ``timm.create_model('maxvit_tiny_tf_224', img_size=...)`` does, and pretrained bias tables are resized on
      load as timm resizes them. Without it the variant's window is used at every input size.
    * Parameter names are timm's, so :func:`checkpoint_filter_fn` renames nothing: it unwraps, reshapes 1x1-conv
      projections saved as convs to Linear, resizes bias tables for another window, and checks the keys.
    * Pretrained cfgs point at timm's Hugging Face weights (``timm/maxvit_<size>_tf_<res>.<tag>``): ``in1k`` for
      T/S/B/L, ``in21k`` (21843 classes) at 224 and ``in21k_ft_in1k`` at 384/512 for B/L/XL.
    * ``drop_path_rate`` defaults to 0 (per-stage linear schedule as timm's when set).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    LayerNorm,
    LayerNorm2d,
    Mlp,
    NormMlpClassifierHead,
    calculate_drop_path_rates,
    create_conv2d,
    get_act_layer,
    get_device_dtype,
    get_norm_act_layer,
    resize_rel_pos_bias_table,
    to_2tuple,
)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._manipulate import named_apply

from zoo.layers.block import PreNormBlockCl
from zoo.layers.mbconv import MbConvBlock2d
from zoo.layers.partition_attention import PartitionAttentionCl

from ._helpers import (
    StagedModelMixin,
    build_model,
    check_classifier_args,
    check_global_pool,
    check_state_dict,
    loader_adapted_keys,
    overlay_cfg_strict,
    unwrap_state_dict,
)

# checkpoint_filter_fn stays out of __all__: zoo.models star-imports every family and others export that name too
__all__ = ['MaxVitCfg', 'MaxVitStem', 'MaxVitBlock', 'MaxVitStage', 'MaxVit']

Size2 = Union[int, Tuple[int, int]]


@dataclass(frozen=True)
class MaxVitCfg:
    """Architecture of one MaxViT variant (the TF MaxViT block recipe; timm's ``maxvit_*_tf`` configs).

    Attributes:
        embed_dims: channels of the four stages.
        depths: MaxViT blocks per stage.
        stem_width: channels of the two stem convs (an int for both).
        head_hidden_size: width of the pre-logits Linear + tanh of the head (None: no pre-logits layer).
        dim_head: channels per attention head.
        window_size: tokens per side of a block-attention window (an int or ``(h, w)``).
        grid_size: tokens per side of a grid-attention window; None: ``window_size``.
        partition_ratio: input pixels per window token when ``img_size`` sets the window (32: one stage-4 token).
        expand_ratio: MBConv hidden channels over output channels.
        se_ratio: MBConv squeeze-excite channels over output channels.
        mlp_ratio: transformer MLP hidden channels over block channels.
        conv_norm_eps: epsilon of the stem and MBConv BatchNorms.
        attn_norm_eps: epsilon of the transformer and head LayerNorms.
        head_first: ``qkv`` channels ordered head-major (timm's default) instead of TF's ``(q, k, v)``-major.
    """
    embed_dims: Tuple[int, ...] = (64, 128, 256, 512)
    depths: Tuple[int, ...] = (2, 2, 5, 2)
    stem_width: Size2 = 64
    head_hidden_size: Optional[int] = 512
    dim_head: int = 32
    window_size: Size2 = 7
    grid_size: Optional[Size2] = None
    partition_ratio: int = 32
    expand_ratio: float = 4.
    se_ratio: float = 0.25
    mlp_ratio: float = 4.
    conv_norm_eps: float = 1e-3
    attn_norm_eps: float = 1e-5
    head_first: bool = False

    def __post_init__(self):
        n = len(self.depths)
        if n < 1 or any(d < 1 for d in self.depths):
            raise ValueError(f'depths must be a non-empty sequence of ints >= 1, got depths={self.depths}')
        if len(self.embed_dims) != n or any(c < 1 for c in self.embed_dims):
            raise ValueError(f'embed_dims must give one int >= 1 per stage ({n}), got embed_dims={self.embed_dims}')
        if self.dim_head < 1 or any(c % self.dim_head for c in self.embed_dims):
            raise ValueError(f'dim_head must divide every stage width (embed_dims={self.embed_dims}), '
                             f'got dim_head={self.dim_head}')
        stem = to_2tuple(self.stem_width)
        if len(stem) != 2 or any(int(c) < 1 for c in stem):
            raise ValueError(f'stem_width must be an int or pair of ints >= 1, got stem_width={self.stem_width}')
        for name in ('window_size', 'grid_size'):
            value = getattr(self, name)
            if value is None and name == 'grid_size':
                continue
            size = to_2tuple(value)
            if len(size) != 2 or any(int(s) < 1 for s in size):
                raise ValueError(f'{name} must be an int or (h, w) pair of ints >= 1, got {name}={value!r}')
        if self.head_hidden_size is not None and self.head_hidden_size < 1:
            raise ValueError(f'head_hidden_size must be None or >= 1, got head_hidden_size={self.head_hidden_size}')
        if self.partition_ratio < 1:
            raise ValueError(f'partition_ratio must be >= 1, got partition_ratio={self.partition_ratio}')
        for name in ('expand_ratio', 'mlp_ratio', 'conv_norm_eps', 'attn_norm_eps'):
            if getattr(self, name) <= 0:
                raise ValueError(f'{name} must be > 0, got {name}={getattr(self, name)}')
        if self.se_ratio < 0:
            raise ValueError(f'se_ratio must be >= 0, got se_ratio={self.se_ratio}')

    @property
    def window(self) -> Tuple[int, int]:
        return tuple(int(s) for s in to_2tuple(self.window_size))

    @property
    def grid(self) -> Tuple[int, int]:
        return self.window if self.grid_size is None else tuple(int(s) for s in to_2tuple(self.grid_size))


class MaxVitStem(nn.Module):
    """conv3x3/s2 -> BN-act -> conv3x3 (TF 'same' padding, with biases): ``[B, C, H, W] -> [B, width, H/2, W/2]``."""

    def __init__(
            self,
            in_chans: int,
            stem_width: Size2 = 64,
            act_layer: str = 'gelu_tanh',
            norm_eps: float = 1e-3,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        c1, c2 = to_2tuple(stem_width)
        self.out_chs = c2
        self.conv1 = create_conv2d(in_chans, c1, 3, stride=2, padding='same', bias=True, **dd)
        self.norm1 = get_norm_act_layer('batchnorm2d', act_layer)(c1, eps=norm_eps, **dd)
        self.conv2 = create_conv2d(c1, c2, 3, stride=1, padding='same', bias=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(x)))


class MaxVitBlock(nn.Module):
    """MBConv, then block attention and grid attention (each a pre-norm transformer block); NCHW in and out."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            cfg: MaxVitCfg,
            stride: int = 1,
            window_size: Optional[Tuple[int, int]] = None,
            grid_size: Optional[Tuple[int, int]] = None,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chs: input channels.
            out_chs: output channels.
            cfg: the variant (block options).
            stride: 2 to halve the map in the MBConv.
            window_size: block-attention window; default ``cfg``'s.
            grid_size: grid-attention grid; default ``cfg``'s.
            drop_path: stochastic-depth rate of every residual branch of the block.
            device: device of the parameters.
            dtype: dtype of the parameters.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv = MbConvBlock2d(
            in_chs, out_chs,
            stride=stride,
            expand_ratio=cfg.expand_ratio,
            se_ratio=cfg.se_ratio,
            norm_eps=cfg.conv_norm_eps,
            drop_path=drop_path,
            **dd,
        )
        block = partial(
            PreNormBlockCl,
            out_chs,
            PartitionAttentionCl,
            mlp_layer=Mlp,
            mlp_ratio=cfg.mlp_ratio,
            drop_path=drop_path,
            act_layer=get_act_layer('gelu_tanh'),
            norm_layer=partial(LayerNorm, eps=cfg.attn_norm_eps),
            **dd,
        )
        attn = dict(dim_head=cfg.dim_head, head_first=cfg.head_first)
        self.attn_block = block(attn_kwargs=dict(
            partition_size=window_size or cfg.window, partition_type='block', **attn))
        self.attn_grid = block(attn_kwargs=dict(partition_size=grid_size or cfg.grid, partition_type='grid', **attn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)
        x = self.attn_grid(self.attn_block(x))
        return x.permute(0, 3, 1, 2)


class MaxVitStage(nn.Module):
    """MaxViT blocks, the first one halving the map (and changing the width); NCHW in and out."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            cfg: MaxVitCfg,
            window_size: Optional[Tuple[int, int]] = None,
            grid_size: Optional[Tuple[int, int]] = None,
            drop_path: Tuple[float, ...] = (),
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        drop_path = tuple(drop_path) or (0.,) * depth
        if len(drop_path) != depth:
            raise ValueError(f'drop_path must have depth={depth} entries, got drop_path={drop_path}')
        self.blocks = nn.Sequential(*[
            MaxVitBlock(
                in_chs if i == 0 else out_chs, out_chs, cfg,
                stride=2 if i == 0 else 1,
                window_size=window_size,
                grid_size=grid_size,
                drop_path=drop_path[i],
                **dd,
            )
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _init_weights(module: nn.Module, name: str = '') -> None:
    """timm's 'vit_eff' MaxViT init: EfficientNet-style convs, xavier-uniform Linears (MLP biases ~1e-6); the head
    keeps PyTorch's defaults."""
    if name.startswith('head'):
        return
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            if '.mlp.' in name:
                nn.init.normal_(module.bias, std=1e-6)
            else:
                nn.init.zeros_(module.bias)


class MaxVit(StagedModelMixin, nn.Module):
    """MaxViT: a stride-2 stem and four stages of MaxViT blocks at strides 4, 8, 16, 32 (NCHW).

    ``forward_features`` maps ``[B, in_chans, H, W]`` to ``[B, embed_dims[-1], ceil(H/32), ceil(W/32)]``; the norm
    is in the head (pool -> LayerNorm2d -> pre-logits). Features (``feature_info``, ``forward_intermediates``,
    ``features_only``) are timm's for MaxViT: the stem (stride 2) and the four stages, five in all.
    """

    stage_fmt = 'NCHW'
    stem_name = 'stem'
    stem_feature = True  # feature 0 is the stem (stride 2), 1-4 the stages; the final norm is in the head

    def __init__(
            self,
            cfg: MaxVitCfg,
            img_size: Optional[Size2] = None,
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
            cfg: architecture; fields can be overridden by keyword (``window_size=8``, ``depths=...``).
            img_size: optional training resolution: window and grid become ``img_size // partition_ratio`` per axis
                (timm's rule); None keeps ``cfg``'s window and grid. Inputs of any size run either way.
            in_chans: image channels.
            num_classes: classifier outputs (0: no classifier).
            global_pool: pooling of the head ('avg', 'max', ... ; '' keeps the map and makes the head 1x1 convs).
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
            device: device of the parameters.
            dtype: dtype of the parameters.
            **kwargs: ``MaxVitCfg`` fields overriding ``cfg``.

        Raises:
            ValueError: an argument or config field outside its valid values, naming it.
            TypeError: a keyword that is neither an argument nor a ``MaxVitCfg`` field.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        cfg = overlay_cfg_strict(cfg, kwargs)
        self._init_args(in_chans, num_classes, drop_rate, drop_path_rate)
        window, grid = cfg.window, cfg.grid
        if img_size is not None:
            img_size = tuple(int(s) for s in to_2tuple(img_size))
            window = grid = tuple(s // cfg.partition_ratio for s in img_size)
            if len(img_size) != 2 or min(window) < 1:
                raise ValueError(f'img_size must be an int or (h, w) pair of ints >= partition_ratio='
                                 f'{cfg.partition_ratio}, got img_size={img_size}')
        self.cfg = cfg
        self.window_size, self.grid_size = window, grid
        self.num_features = self.embed_dim = cfg.embed_dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = MaxVitStem(in_chans, cfg.stem_width, norm_eps=cfg.conv_norm_eps, **dd)
        self.feature_info = [dict(num_chs=self.stem.out_chs, reduction=2, module='stem')]
        dpr = calculate_drop_path_rates(drop_path_rate, list(cfg.depths), stagewise=True)
        stages = []
        in_chs = self.stem.out_chs
        for i, (dim, depth) in enumerate(zip(cfg.embed_dims, cfg.depths)):
            stages.append(MaxVitStage(
                in_chs, dim, depth, cfg, window_size=window, grid_size=grid, drop_path=dpr[i], **dd))
            in_chs = dim
            self.feature_info.append(dict(num_chs=dim, reduction=2 ** (i + 2), module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()
        self._init_head(num_classes, global_pool, drop_rate, dd)
        named_apply(_init_weights, self)

    def _init_head(self, num_classes: int, global_pool: str, drop_rate: float, dd: Dict) -> None:
        check_global_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.head = NormMlpClassifierHead(
            self.num_features, num_classes,
            hidden_size=self.cfg.head_hidden_size,
            pool_type=global_pool,
            drop_rate=drop_rate,
            norm_layer=partial(LayerNorm2d, eps=self.cfg.attn_norm_eps),
            **dd,
        )
        self.head_hidden_size = self.head.num_features

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """The relative position bias tables (timm's choice for MaxViT)."""
        return {n for n, _ in self.named_parameters() if 'relative_position_bias_table' in n}

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False) -> None:
        """Replace the classifier (``num_classes=0``: pre-logits features; ``global_pool=''``: no pooling).

        ``reset_classifier(0, '')`` removes the whole head, its norm and pre-logits layer included, so the model
        returns the unpooled ``forward_features`` map (timm's MaxViT keeps them, as 1x1 convs over the map).

        Args:
            num_classes: new number of outputs.
            global_pool: new pooling type; None keeps the current one.
            reset_other: also drop the head's norm and pre-logits layer (pooled stage features come out). Done
                whenever the features feeding the head changed width (:meth:`prune_intermediate_layers`).

        Raises:
            ValueError: ``num_classes < 0`` or an unknown ``global_pool``.
        """
        check_classifier_args(num_classes, global_pool)
        if global_pool is not None:
            self.global_pool = global_pool
        reset_other = (reset_other or self.num_features != self.head.in_features
                       or (num_classes == 0 and self.global_pool == ''))
        self.num_classes = num_classes
        self.head.reset(
            num_classes, pool_type=global_pool, reset_other=reset_other, in_features=self.num_features,
            **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert a timm ``maxvit_*_tf`` (or native) checkpoint for ``model``.

    The parameter names are timm's, so no key is renamed. A plain state dict or one wrapped as ``{'model': ...}`` /
    ``{'state_dict': ...}`` is accepted; ``[out, in, 1, 1]`` 1x1-conv weights saved for a Linear are reshaped to
    ``[out, in]``, and bias tables of another window size are resized to the model's as timm's filter does
    (``timm.layers.resize_rel_pos_bias_table``).

    Raises:
        ValueError: the result does not have exactly the model's keys and shapes (the classifier and the first
            conv excepted: the loaders adapt them to ``num_classes`` / ``in_chans``).
    """
    state_dict = unwrap_state_dict(state_dict)
    target = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        ref = target.get(key)
        if ref is not None and value.shape != ref.shape:
            if key.endswith('relative_position_bias_table') and value.dim() == 3:
                rel_pos = model.get_submodule(key.rsplit('.', 1)[0])
                value = resize_rel_pos_bias_table(
                    value, new_window_size=rel_pos.window_size, new_bias_shape=tuple(ref.shape))
            elif value.dim() == 4 and ref.dim() == 2 and value.numel() == ref.numel():
                value = value.reshape(ref.shape)
        out[key] = value
    check_state_dict(out, model, exempt=loader_adapted_keys(model))
    return out


def _create_maxvit(variant: str, pretrained: bool = False, **kwargs) -> MaxVit:
    cfg = model_cfgs[variant]
    out_indices = kwargs.pop('out_indices', tuple(range(len(cfg.depths) + 1)))
    return build_model(
        MaxVit, variant, pretrained,
        model_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


_SIZES = dict(
    tiny=dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 5, 2), stem_width=64, head_hidden_size=512),
    small=dict(embed_dims=(96, 192, 384, 768), depths=(2, 2, 5, 2), stem_width=64, head_hidden_size=768),
    base=dict(embed_dims=(96, 192, 384, 768), depths=(2, 6, 14, 2), stem_width=64, head_hidden_size=768),
    large=dict(embed_dims=(128, 256, 512, 1024), depths=(2, 6, 14, 2), stem_width=128, head_hidden_size=1024),
    xlarge=dict(embed_dims=(192, 384, 768, 1536), depths=(2, 6, 14, 2), stem_width=192, head_hidden_size=1536),
)
_RESOLUTIONS = (224, 384, 512)

model_cfgs = {
    f'maxvit_zoo_{size}_{res}': MaxVitCfg(window_size=res // 32, **arch)
    for size, arch in _SIZES.items() for res in _RESOLUTIONS
}
# tiny variant for tests and the CPU demo (64x64 inputs; 4x4 windows, so the 2x2 last stage is one shrunk window)
model_cfgs['maxvit_zoo_test'] = MaxVitCfg(
    embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), stem_width=16, head_hidden_size=64, dim_head=8, window_size=4)


def _cfg(hf_hub_id: str = '', res: int = 224, **kwargs) -> Dict:
    # timm's maxvit_*_tf cfgs, without fixed_input_size: these models take any input size
    extra = dict(crop_pct=0.95) if res == 224 else dict(crop_pct=1.0, crop_mode='squash')
    return {
        'hf_hub_id': hf_hub_id,
        'num_classes': 1000,
        'input_size': (3, res, res),
        'pool_size': (res // 32, res // 32),
        'interpolation': 'bicubic',
        'mean': (0.5, 0.5, 0.5),
        'std': (0.5, 0.5, 0.5),
        'first_conv': 'stem.conv1',
        'classifier': 'head.fc',
        'custom_load': True,  # files and URLs go through PretrainedFileMixin.load_pretrained
        'license': 'apache-2.0',
        'origin_url': 'https://github.com/google-research/maxvit',
        'paper_ids': 'arXiv:2204.01697',
        'paper_name': 'MaxViT: Multi-Axis Vision Transformer',
        **extra,
        **kwargs,
    }


def _timm_weights(size: str, res: int, tag: str, **kwargs) -> Tuple[str, Dict]:
    # our name with timm's tag -> timm's Hugging Face weights of the same variant and its preprocessing
    if tag == 'in1k' and res == 224:
        kwargs.update(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    return f'maxvit_zoo_{size}_{res}.{tag}', _cfg(f'timm/maxvit_{size}_tf_{res}.{tag}', res, **kwargs)


# timm's order: the first tag of a name is its default (in1k where it exists)
default_cfgs = generate_default_cfgs(dict([
    *(_timm_weights(size, res, 'in1k') for size in ('tiny', 'small', 'base', 'large') for res in _RESOLUTIONS),
    *(_timm_weights(size, 224, 'in21k', num_classes=21843) for size in ('base', 'large', 'xlarge')),
    *(_timm_weights(size, res, 'in21k_ft_in1k') for size in ('base', 'large', 'xlarge') for res in (384, 512)),
    ('maxvit_zoo_test', _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0)),
]))


@register_model
def maxvit_zoo_tiny_224(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_tiny_224', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_tiny_384(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_tiny_384', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_tiny_512(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_tiny_512', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_small_224(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_small_224', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_small_384(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_small_384', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_small_512(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_small_512', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_base_224(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_base_224', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_base_384(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_base_384', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_base_512(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_base_512', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_large_224(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_large_224', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_large_384(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_large_384', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_large_512(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_large_512', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_xlarge_224(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_xlarge_224', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_xlarge_384(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_xlarge_384', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_xlarge_512(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_xlarge_512', pretrained=pretrained, **kwargs)


@register_model
def maxvit_zoo_test(pretrained: bool = False, **kwargs) -> MaxVit:
    return _create_maxvit('maxvit_zoo_test', pretrained=pretrained, **kwargs)
