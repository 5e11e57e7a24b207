"""LITv2: Fast Vision Transformers with HiLo Attention, built from the zoo's shared blocks.

Paper:
    `Fast Vision Transformers with HiLo Attention` - https://arxiv.org/abs/2205.13213 (NeurIPS 2022)

    @inproceedings{pan2022hilo,
        title = {Fast Vision Transformers with HiLo Attention},
        author = {Pan, Zizheng and Cai, Jianfei and Zhuang, Bohan},
        booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
        year = {2022},
    }

Architecture and released weights: https://github.com/ziplab/LITv2 (Apache-2.0). Independent implementation on the
shared layers; official checkpoints load through :func:`checkpoint_filter_fn` (key renames only).

Layout (channels-last ``[B, H, W, C]`` between blocks): patch stem conv4x4/s4 -> LayerNorm
(:class:`~zoo.layers.PatchEmbedCl`); four stages at strides 4, 8, 16, 32, stages 2-4 starting with deformable token
merging (:class:`~zoo.layers.DeformTokenMergeCl`: deformable conv2x2/s2 -> BatchNorm2d -> GELU; no compiled DCN,
no apex: bilinear ``F.grid_sample`` + matmul, or ``torchvision.ops.deform_conv2d`` with
``deform_impl='torchvision'``); final LayerNorm, mean pool, Linear. Blocks are
:class:`~zoo.layers.PreNormBlockCl` with a :class:`~zoo.layers.ConvFfnCl` MLP (fc1 -> depthwise 3x3 -> GELU -> fc2):

* stages whose ``local_ws`` is 0 (LITv2's stages 1-2) have no attention at all: ``x + mlp(norm2(x))``;
* the others add :class:`~zoo.layers.HiLoAttentionCl` with window ``local_ws`` and Lo-Fi share ``alpha``
  (stage 3: ``s = 2``; stage 4: ``s = 1``, i.e. plain multi-head attention).

Names: ``litv2_small``, ``litv2_medium``, ``litv2_base``, ``litv2_base_384`` (the released ImageNet-1k models) and
``litv2_test`` (tiny, for tests). ``alpha`` is a constructor argument (``timm.create_model('litv2_small',
alpha=0.5)``): the paper's alpha ablation (0, 0.2, 0.4, 0.5, 0.7, 0.9, 1) changes the parameter count through
HiLo's two output projections, as in the official code.

Notes:
    * Any input size. The official classification model asserts its ``img_size`` and its ``DWConv`` assumes square
      maps; here the stem pads to multiples of 4, HiLo pads to its window inside the block and crops (as the official
      detection / segmentation backbones do, see :mod:`zoo.layers.hilo`), and token merging floors odd sizes as the
      official detection code (an axis of 1 is padded to 2). Stage ``i`` has ``ceil(H / 4) // 2 ** i`` rows
      (at least 1).
    * Parameter names follow the official ones except for containers (``patch_embed`` -> ``stem``, ``layers.i`` ->
      ``stages.i`` with the merging that ends official stage ``i`` starting our stage ``i + 1``, BN ``norm_layer``
      -> ``norm``, ``mlp.dwconv.dwconv`` -> ``mlp.dwconv``, ``head`` -> ``head.fc``).
    * ``drop_path_rate`` defaults to 0; the official trainings used 0.2 (S), 0.3 (M), 0.5 (B). The official
      optimiser scaled the offset convs' learning rate by 0.01 (``OFFSET_LR_MULTI``); :meth:`LITv2.offset_params`
      names them for a training recipe that does the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Set, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import calculate_drop_path_rates
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from zoo.layers._checks import check_number
from zoo.layers.block import PreNormBlockCl
from zoo.layers.deform_merge import IMPLS, DeformTokenMergeCl
from zoo.layers.hilo import HiLoAttentionCl, hilo_head_split
from zoo.layers.mlp import ConvFfnCl
from zoo.layers.stems import PatchEmbedCl

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

# checkpoint_filter_fn stays out of __all__: zoo.models star-imports every family
__all__ = ['LITv2Cfg', 'LITv2Stage', 'LITv2']


@dataclass(frozen=True)
class LITv2Cfg:
    """Architecture of one LITv2 variant.

    Attributes:
        embed_dim: channels of stage 1 (doubled by every merging).
        depths: blocks per stage.
        num_heads: attention heads per stage (used where ``local_ws > 0``).
        local_ws: HiLo window per stage; 0 makes the stage's blocks MLP-only (no attention), 1 plain MSA.
        alpha: share of Lo-Fi heads in [0, 1] (``int(heads * alpha)`` Lo-Fi heads).
        mlp_ratio: ConvFFN hidden width over block width.
        qkv_bias: biases in HiLo's ``h_qkv`` / ``l_q`` / ``l_kv``.
        patch_size: stride of the patch stem.
        deform_impl: the deformable convs of the token merging: 'sampled' (``F.grid_sample`` + matmul, fast on CPU)
            or 'torchvision' (``torchvision.ops.deform_conv2d``); same function, same parameters.
    """
    embed_dim: int = 96
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (3, 6, 12, 24)
    local_ws: Tuple[int, ...] = (0, 0, 2, 1)
    alpha: float = 0.9
    mlp_ratio: float = 4.
    qkv_bias: bool = True
    patch_size: int = 4
    deform_impl: str = 'sampled'

    def __post_init__(self):
        n = len(self.depths)
        if n < 1 or any(not isinstance(d, int) or d < 1 for d in self.depths):
            raise ValueError(f'depths must be a non-empty sequence of ints >= 1, got depths={self.depths}')
        if self.embed_dim < 1:
            raise ValueError(f'embed_dim must be >= 1, got embed_dim={self.embed_dim}')
        if len(self.local_ws) != n or any(not isinstance(w, int) or w < 0 for w in self.local_ws):
            raise ValueError(f'local_ws must give one int >= 0 per stage ({n}), got local_ws={self.local_ws}')
        if len(self.num_heads) != n:
            raise ValueError(f'num_heads must give one int per stage ({n}), got num_heads={self.num_heads}')
        for i, (heads, ws) in enumerate(zip(self.num_heads, self.local_ws)):
            if ws and (heads < 1 or self.dims[i] % heads):
                raise ValueError(f'num_heads must divide the stage widths {self.dims} of the attention stages, '
                                 f'got num_heads={self.num_heads}')
        hilo_head_split(1, self.alpha, 1)  # alpha in [0, 1]
        check_number('mlp_ratio', self.mlp_ratio, 0, low_open=True)
        if self.patch_size < 1:
            raise ValueError(f'patch_size must be >= 1, got patch_size={self.patch_size}')
        if self.deform_impl not in IMPLS:
            raise ValueError(f'deform_impl must be one of {IMPLS}, got deform_impl={self.deform_impl!r}')

    @property
    def dims(self) -> Tuple[int, ...]:
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))


class LITv2Stage(nn.Module):
    """Optional deformable token merging followed by LITv2 blocks; channels-last in and out."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            local_ws: int,
            cfg: LITv2Cfg,
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
            num_heads: HiLo heads.
            local_ws: HiLo window (0: MLP-only blocks).
            cfg: the variant (alpha, MLP ratio, qkv bias).
            downsample: start with deformable token merging ``dim -> out_dim``.
            drop_path: one stochastic-depth rate per block (default all 0).
            device: device of the parameters.
            dtype: dtype of the parameters.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        drop_path = tuple(drop_path) or (0.,) * depth
        if len(drop_path) != depth:
            raise ValueError(f'drop_path must have depth={depth} entries, got drop_path={drop_path}')
        if downsample:
            self.downsample = DeformTokenMergeCl(dim, out_dim, impl=cfg.deform_impl, **dd)
        elif dim != out_dim:
            raise ValueError(f'out_dim must equal dim without a downsampler, got dim={dim}, out_dim={out_dim}')
        else:
            self.downsample = nn.Identity()
        attn_kwargs = dict(num_heads=num_heads, window_size=local_ws, alpha=cfg.alpha, qkv_bias=cfg.qkv_bias)
        self.blocks = nn.Sequential(*[
            PreNormBlockCl(
                out_dim,
                attn_layer=HiLoAttentionCl if local_ws else None,
                attn_kwargs=attn_kwargs if local_ws else None,
                mlp_layer=ConvFfnCl,
                mlp_ratio=cfg.mlp_ratio,
                drop_path=drop_path[i],
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


class LITv2(StagedModelMixin, nn.Module):
    """LITv2-S/M/B: a 4x4 patch stem and four channels-last stages at strides 4, 8, 16, 32.

    ``forward_features`` maps ``[B, in_chans, H, W]`` to normed ``[B, H', W', num_features]`` (NHWC); the classifier
    and feature interface come from :class:`StagedModelMixin`.
    """

    output_fmt = 'NHWC'
    stage_fmt = 'NHWC'
    stem_name = 'stem'

    def __init__(
            self,
            cfg: LITv2Cfg,
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
            cfg: architecture; fields can be overridden by keyword (``alpha=0.5``, ``local_ws=...``).
            in_chans: image channels.
            num_classes: classifier outputs (0: no classifier).
            global_pool: pooling of the head ('avg', 'max', 'avgmax', '' ...).
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
            device: device of the parameters.
            dtype: dtype of the parameters.
            **kwargs: ``LITv2Cfg`` fields overriding ``cfg``.

        Raises:
            ValueError: an argument or config field outside its valid values, naming it.
            TypeError: a keyword that is neither an argument nor a ``LITv2Cfg`` field.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        cfg = overlay_cfg_strict(cfg, kwargs)
        self._init_args(in_chans, num_classes, drop_rate, drop_path_rate)
        self.cfg = cfg
        dims = cfg.dims
        self.num_features = dims[-1]
        self.grad_checkpointing = False

        self.stem = PatchEmbedCl(cfg.patch_size, in_chans, dims[0], **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, sum(cfg.depths))
        stages = []
        self.feature_info = []
        start = 0
        for i, depth in enumerate(cfg.depths):
            stages.append(LITv2Stage(
                dims[max(i - 1, 0)], dims[i], depth, cfg.num_heads[i], cfg.local_ws[i], cfg,
                downsample=i > 0,
                drop_path=dpr[start:start + depth],
                **dd,
            ))
            start += depth
            self.feature_info.append(
                dict(num_chs=dims[i], reduction=cfg.patch_size * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features, **dd)
        self._init_head(num_classes, global_pool, drop_rate, dd)
        self.apply(init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """No parameter is exempt by name (timm still exempts biases and norm weights by shape)."""
        return set()

    @torch.jit.ignore
    def offset_params(self) -> Iterator[Tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the deformable offset convs (the official recipe trains them at 0.01x lr)."""
        return ((n, p) for n, p in self.named_parameters() if '.conv_offset.' in n)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official LITv2 checkpoint (ziplab/LITv2 classification) to this module's layout.

    Accepts a plain state dict or one wrapped as ``{'model': ...}`` / ``{'state_dict': ...}``; a dict already in
    this layout (``stem.*`` keys) is returned as is. Official keys are renamed: ``patch_embed.`` -> ``stem.``,
    ``layers.i.blocks.j`` -> ``stages.i.blocks.j``, ``layers.i.downsample`` -> ``stages.{i+1}.downsample`` (its
    BatchNorm ``norm_layer`` -> ``norm``), ``mlp.dwconv.dwconv`` -> ``mlp.dwconv``, ``head`` -> ``head.fc``.
    Nothing is dropped or reshaped.

    Raises:
        ValueError: the converted dict does not have exactly the model's keys and shapes (the classifier and the
            first conv excepted: the loaders adapt them to ``num_classes`` / ``in_chans``).
    """
    state_dict = unwrap_state_dict(state_dict)
    native = any(k.startswith('stem.') for k in state_dict)
    rules = [] if native else [
        (r'^patch_embed\.', 'stem.'),
        (r'^layers\.(\d+)\.downsample\.norm_layer\.', r'layers.\1.downsample.norm.'),
        (r'^layers\.(\d+)\.downsample\.', lambda m: f'stages.{int(m.group(1)) + 1}.downsample.'),
        (r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.'),
        (r'\.mlp\.dwconv\.dwconv\.', '.mlp.dwconv.'),
        (r'^head\.(weight|bias)$', r'head.fc.\1'),
    ]
    out = rename_keys(state_dict, rules)
    check_state_dict(out, model, exempt=loader_adapted_keys(model))
    return out


def _create_litv2(variant: str, pretrained: bool = False, **kwargs) -> LITv2:
    cfg = model_cfgs[variant]
    out_indices = kwargs.pop('out_indices', tuple(range(len(cfg.depths))))
    return build_model(
        LITv2, variant, pretrained,
        model_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


model_cfgs = dict(
    litv2_small=LITv2Cfg(),
    litv2_medium=LITv2Cfg(depths=(2, 2, 18, 2)),
    litv2_base=LITv2Cfg(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    litv2_base_384=LITv2Cfg(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),

    # tiny variant for tests (32x32 inputs): MLP-only stage 1, HiLo (1 Lo-Fi + 1 Hi-Fi head) in stages 2-3, MSA last
    litv2_test=LITv2Cfg(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), local_ws=(0, 2, 2, 1),
                        alpha=0.5, mlp_ratio=2.),
)


_URL = 'https://github.com/ziplab/LITv2/releases/download/v1.0/{}.pth'


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
        'first_conv': 'stem.proj',
        'classifier': 'head.fc',
        'custom_load': True,  # files and URLs go through PretrainedFileMixin.load_pretrained
        'license': 'apache-2.0',
        'origin_url': 'https://github.com/ziplab/LITv2',
        'paper_ids': 'arXiv:2205.13213',
        'paper_name': 'Fast Vision Transformers with HiLo Attention',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'litv2_small.in1k': _cfg(_URL.format('litv2_s')),
    'litv2_medium.in1k': _cfg(_URL.format('litv2_m')),
    'litv2_base.in1k': _cfg(_URL.format('litv2_b')),
    # fine-tuned at 384 and evaluated without a centre crop (the config's TEST.CROP: False)
    'litv2_base_384.in1k': _cfg(_URL.format('litv2_b_384'), input_size=(3, 384, 384), pool_size=(12, 12),
                                crop_pct=1.0),

    'litv2_test': _cfg(input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0),
})


@register_model
def litv2_small(pretrained: bool = False, **kwargs) -> LITv2:
    return _create_litv2('litv2_small', pretrained=pretrained, **kwargs)


@register_model
def litv2_medium(pretrained: bool = False, **kwargs) -> LITv2:
    return _create_litv2('litv2_medium', pretrained=pretrained, **kwargs)


@register_model
def litv2_base(pretrained: bool = False, **kwargs) -> LITv2:
    return _create_litv2('litv2_base', pretrained=pretrained, **kwargs)


@register_model
def litv2_base_384(pretrained: bool = False, **kwargs) -> LITv2:
    return _create_litv2('litv2_base_384', pretrained=pretrained, **kwargs)


@register_model
def litv2_test(pretrained: bool = False, **kwargs) -> LITv2:
    return _create_litv2('litv2_test', pretrained=pretrained, **kwargs)
