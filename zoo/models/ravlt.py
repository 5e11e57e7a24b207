"""RAVLT: Rank-Augmented Vision Linear Transformer.

Paper:
    `Breaking the Low-Rank Dilemma of Linear Attention` - https://arxiv.org/abs/2411.07635 (CVPR 2025)

    @inproceedings{fan2025breaking,
        title = {Breaking the Low-Rank Dilemma of Linear Attention},
        author = {Fan, Qihang and Huang, Huaibo and He, Ran},
        booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
        year = {2025},
    }

Architecture and released weights: https://github.com/qhfan/RALA (``classfication/RALA.py``). This is an independent
implementation on :class:`~zoo.layers.RalaAttention2d` (rank-augmented linear attention and the softmax attention of
the later stages, both with 2-D RoPE, LePE and an output gate). Everything is NCHW:

* stem: conv3x3/s2 (C/2) -> BN -> GELU -> conv3x3 (C/2) -> BN -> GELU -> conv3x3 (C/2) -> BN -> GELU -> conv3x3/s2
  (C) -> BN; between stages conv3x3/s2 -> BN (the shared :class:`~zoo.layers.ConvDownsample2d`);
* block: ``x + DwConv3x3(x)`` (the shared :class:`~zoo.layers.Cpe2d`), then the shared pre-norm block with
  ``LayerNorm2d`` (eps 1e-6), layer scale on both branches and a ConvFFN ``fc1 -> GELU -> (DwConv3x3 + identity)
  -> fc2`` (1x1 convs, hidden ``int(3.5 C)``);
* stages 1-2 use RALA, stages 3-4 softmax attention (the official default ``flagss``); RoPE tables once per stage;
* after the last stage: conv1x1 ``C -> 1024`` -> BN -> Swish (``norm`` here, as timm's EfficientNet ``conv_head``:
  ``forward_features`` ends with it), then average pool and the classifier.

Notes:
    * Parameter counts equal the official ones (RAVLT-T/S/B/L: 14,897,768 / 25,591,208 / 48,241,288 /
      95,242,440). The README's FLOPs (2.4 / 4.6 / 9.9 / 16.0 G) understate what fvcore counts on the official code
      (2.626 / 4.899 / 10.616 / 17.256 GMACs; the README seems to leave out most attention matmuls); this
      implementation is anchored to the measured values.
    * Layer-scale init as official: 1.0 for T and S, ``(1, 1, 1e-6, 1e-6)`` per stage for B and ``1e-6`` for L.
    * Any input size runs (the stride-2 convs pad by 1: ``ceil`` sizes); RoPE tables follow the map size.
    * Official keys are renamed by :func:`checkpoint_filter_fn` (``patch_embed.proj.i`` -> ``stem.i``,
      ``layers.i.blocks`` -> ``stages.i.blocks``, ``layers.i.downsample`` -> ``stages.{i+1}.downsample``,
      ``layers.i.RoPE`` -> ``stages.i.rope``, ``norm1.norm`` -> ``norm1``, ``ffn`` -> ``mlp``, ``gamma_1/2
      [1, C, 1, 1]`` -> ``ls1/2.gamma [C]``, ``proj`` / ``norm`` -> ``norm.proj`` / ``norm.bn``, the 1x1-conv
      ``head`` -> ``head.fc``). The released files also hold ``model_ema``: the zoo's loader
      (:class:`~zoo.models._helpers.PretrainedFileMixin`) takes ``model`` as the official evaluation does (timm's
      generic loader would prefer the EMA).
    * ``drop_path_rate`` defaults to 0; the official trainings used 0.1 / 0.15 / 0.4 / 0.55 (T/S/B/L).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm2d, calculate_drop_path_rates, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch.utils.checkpoint import checkpoint

from zoo.layers import (
    ConvDownsample2d,
    Cpe2d,
    PointwiseConv2d,
    PreNormBlock2d,
    RalaAttention2d,
    Rope2d,
    to_channels_last,
)
from zoo.layers._checks import check_drop, check_number

from ._helpers import (
    StagedModelMixin,
    build_model,
    check_state_dict,
    loader_adapted_keys,
    overlay_cfg_strict,
    rename_keys,
    unwrap_state_dict,
)

__all__ = ['RavltCfg', 'RavltFfn', 'RavltBlock', 'RavltStage', 'RAVLT']

_ATTN = ('rala', 'softmax')


@dataclass(frozen=True)
class RavltCfg:
    """Architecture of one RAVLT variant.

    Attributes:
        embed_dims: channels of the four stages.
        depths: blocks per stage.
        num_heads: heads per stage (head widths must be multiples of 4 for the 2-D RoPE).
        attn_types: 'rala' or 'softmax' per stage (official: RALA in stages 1-2, softmax in 3-4).
        mlp_ratio: ConvFFN hidden width over block width (``int(ratio * C)``).
        layer_scale: layer-scale init per stage (both branches), or None for no layer scale in that stage.
        head_hidden_size: channels of the conv1x1 -> BN -> Swish before pooling.
        lepe_kernel: depthwise LePE kernel on v.
        cpe_kernel: depthwise conditional positional encoding kernel before each block.
    """
    embed_dims: Tuple[int, ...] = (64, 128, 256, 512)
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (1, 2, 4, 8)
    attn_types: Tuple[str, ...] = ('rala', 'rala', 'softmax', 'softmax')
    mlp_ratio: float = 3.5
    layer_scale: Tuple[Optional[float], ...] = (1., 1., 1., 1.)
    head_hidden_size: int = 1024
    lepe_kernel: int = 5
    cpe_kernel: int = 3

    def __post_init__(self):
        n = len(self.depths)
        if n < 1 or any(d < 1 for d in self.depths):
            raise ValueError(f'depths must be a non-empty sequence of ints >= 1, got depths={self.depths}')
        for name in ('embed_dims', 'num_heads', 'attn_types', 'layer_scale'):
            if len(getattr(self, name)) != n:
                raise ValueError(f'{name} must give one entry per stage ({n}), got {name}={getattr(self, name)}')
        for c, h in zip(self.embed_dims, self.num_heads):
            if h < 1 or c % h or (c // h) % 4:
                raise ValueError(f'num_heads must divide embed_dims into head widths that are multiples of 4, got '
                                 f'embed_dims={self.embed_dims}, num_heads={self.num_heads}')
        if any(t not in _ATTN for t in self.attn_types):
            raise ValueError(f'attn_types must be {_ATTN} per stage, got attn_types={self.attn_types}')
        check_number('mlp_ratio', self.mlp_ratio, 0, low_open=True)
        if self.head_hidden_size < 1:
            raise ValueError(f'head_hidden_size must be >= 1, got head_hidden_size={self.head_hidden_size}')


class _FoldedCpe(Cpe2d):
    """:class:`~zoo.layers.Cpe2d` ``x + DwConv(x)`` as one depthwise conv whose centre tap is ``weight + 1`` (same
    parameters and values to rounding; saves a pass over the map, which matters for the FFN's 3.5C-wide one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.kernel_size[0] // 2
        centre = F.pad(self.weight.new_ones(1, 1, 1, 1), [c, c, c, c])  # a one-hot k x k kernel
        return self._conv_forward(x, self.weight + centre, self.bias)


class RavltFfn(nn.Module):
    """RAVLT's ConvFFN on NCHW maps: ``fc1 (1x1) -> act -> (DwConv3x3 + identity) -> fc2 (1x1)``."""

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_features: input channels.
            hidden_features: channels of ``fc1`` and the depthwise conv (default ``in_features``).
            out_features: output channels (default ``in_features``).
            act_layer: activation after ``fc1``.
            drop: dropout after the activation and after ``fc2``.
            device: device of the parameters.
            dtype: dtype of the parameters.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        check_drop('drop', drop)
        self.fc1 = PointwiseConv2d(in_features, hidden_features, **dd)
        self.act = act_layer()
        self.dwconv = _FoldedCpe(hidden_features, 3, **dd)  # x + DwConv(x), the official ``dwconv`` + residual
        self.fc2 = PointwiseConv2d(hidden_features, out_features, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, out_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, in_features, H, W]`` -> ``[B, out_features, H, W]``; ``out_scale [out_features]`` multiplies the
        output (folded into ``fc2``)."""
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(self.dwconv(x), out_scale))


class RavltBlock(PreNormBlock2d):
    """``x + DwConv3x3(x)``, then ``x + ls1 * attn(LN2d(x))`` and ``x + ls2 * FFN(LN2d(x))`` (NCHW)."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            attn_type: str = 'rala',
            mlp_ratio: float = 3.5,
            layer_scale: Optional[float] = 1.,
            drop_path: float = 0.,
            lepe_kernel: int = 5,
            cpe_kernel: int = 3,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: block width.
            num_heads: attention heads.
            attn_type: 'rala' or 'softmax'.
            mlp_ratio: ConvFFN hidden width over ``dim``.
            layer_scale: init value of ``ls1.gamma`` / ``ls2.gamma``, or None (no layer scale).
            drop_path: stochastic depth rate of both residual branches.
            lepe_kernel: LePE kernel.
            cpe_kernel: kernel of the positional conv before the block.
            device: device of the parameters.
            dtype: dtype of the parameters.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__(
            dim, RalaAttention2d, mlp_layer=RavltFfn,
            attn_kwargs=dict(num_heads=num_heads, mode=attn_type, lepe_kernel=lepe_kernel),
            mlp_ratio=mlp_ratio, init_values=layer_scale, drop_path=drop_path,
            norm_layer=lambda d, **kw: LayerNorm2d(d, eps=1e-6, **kw), **dd)
        self.pos = _FoldedCpe(dim, cpe_kernel, **dd)

    def forward(self, x: torch.Tensor, rope: List[torch.Tensor]) -> torch.Tensor:
        """``[B, dim, H, W]`` and the stage's RoPE tables -> ``[B, dim, H, W]``."""
        # the layer scales (LayerScale2d ``gamma``, or none: nn.Identity) go to the last 1x1 conv of their branch,
        # which folds them into its weight and bias where the map is the larger operand (PointwiseConv2d)
        gamma1: Optional[torch.Tensor] = None
        gamma2: Optional[torch.Tensor] = None
        if hasattr(self.ls1, 'gamma'):
            gamma1 = self.ls1.gamma
        if hasattr(self.ls2, 'gamma'):
            gamma2 = self.ls2.gamma
        x = self.pos(x)
        x = x + self.drop_path1(self.attn(self.norm1(x), rope, gamma1))
        return x + self.drop_path2(self.mlp(self.norm2(x), gamma2))


class RavltStage(nn.Module):
    """Optional conv3x3/s2 + BN downsampler, the stage's RoPE tables, then RAVLT blocks; NCHW in and out."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            attn_type: str,
            cfg: RavltCfg,
            layer_scale: Optional[float],
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
        self.downsample = ConvDownsample2d(dim, out_dim, **dd) if downsample else nn.Identity()
        self.rope = Rope2d(out_dim // num_heads, **dd)
        self.blocks = nn.ModuleList([
            RavltBlock(
                out_dim, num_heads, attn_type,
                mlp_ratio=cfg.mlp_ratio,
                layer_scale=layer_scale,
                drop_path=drop_path[i],
                lepe_kernel=cfg.lepe_kernel,
                cpe_kernel=cfg.cpe_kernel,
                **dd,
            )
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(to_channels_last(x))  # no-op after the stem (see _Stem)
        rope = self.rope((x.shape[-2], x.shape[-1]))
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
        return x


class _Stem(nn.Sequential):
    """The conv stem, run channels-last: RAVLT's depthwise and 1x1 convs are several times faster on channels-last
    maps on CPU (oneDNN), and every later layer keeps the format (values are the same as NCHW)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channels_last(x)
        for module in self:
            x = module(x)
        return x


class _HeadConv(nn.Sequential):
    """conv1x1 -> BN -> Swish before pooling (``proj``, ``bn``, ``act``)."""

    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__(OrderedDict(
            proj=PointwiseConv2d(dim, hidden, **dd), bn=nn.BatchNorm2d(hidden, **dd), act=nn.SiLU()))


class RAVLT(StagedModelMixin, nn.Module):
    """RAVLT-T/S/B/L: a stride-4 conv stem and four stages at strides 4, 8, 16, 32 (NCHW).

    ``forward_features`` maps ``[B, in_chans, H, W]`` to ``[B, head_hidden_size, ceil(H/32), ceil(W/32)]`` after the
    conv1x1 -> BN -> Swish ``norm``; the classifier and feature interface come from :class:`StagedModelMixin`.
    """

    stage_fmt = 'NCHW'
    stem_name = 'stem'

    def __init__(
            self,
            cfg: RavltCfg,
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
            cfg: architecture; fields can be overridden by keyword (``depths=...``, ``attn_types=...``).
            in_chans: image channels.
            num_classes: classifier outputs (0: no classifier).
            global_pool: pooling of the head ('avg', 'max', 'avgmax', '' ...).
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
            device: device of the parameters.
            dtype: dtype of the parameters.
            **kwargs: ``RavltCfg`` fields overriding ``cfg``.

        Raises:
            ValueError: an argument or config field outside its valid values, naming it.
            TypeError: a keyword that is neither an argument nor a ``RavltCfg`` field.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        cfg = overlay_cfg_strict(cfg, kwargs)
        self._init_args(in_chans, num_classes, drop_rate, drop_path_rate)
        self.cfg = cfg
        dims = cfg.embed_dims
        self.grad_checkpointing = False
        half = dims[0] // 2
        if half < 1:
            raise ValueError(f'embed_dims[0] must be >= 2, got embed_dims={dims}')

        def conv_bn(i, o, s):
            return [nn.Conv2d(i, o, 3, s, 1, **dd), nn.BatchNorm2d(o, **dd)]

        self.stem = _Stem(
            *conv_bn(in_chans, half, 2), nn.GELU(), *conv_bn(half, half, 1), nn.GELU(), *conv_bn(half, half, 1),
            nn.GELU(), *conv_bn(half, dims[0], 2))

        dpr = calculate_drop_path_rates(drop_path_rate, sum(cfg.depths))
        stages = []
        self.feature_info = []
        start = 0
        for i, depth in enumerate(cfg.depths):
            stages.append(RavltStage(
                dims[max(i - 1, 0)], dims[i], depth, cfg.num_heads[i], cfg.attn_types[i], cfg, cfg.layer_scale[i],
                downsample=i > 0,
                drop_path=dpr[start:start + depth],
                **dd,
            ))
            start += depth
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = cfg.head_hidden_size
        self.norm = _HeadConv(dims[-1], cfg.head_hidden_size, **dd)
        self._init_head(num_classes, global_pool, drop_rate, dd)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # official: truncated-normal (0.02) conv weights with zero bias; LayerNorm ones/zeros; Linear as timm's head
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            trunc_normal_(module.weight, std=.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """No parameter is exempt by name (timm still exempts biases, norms and layer scales by shape)."""
        return set()

    def prune_intermediate_layers(
            self,
            indices: Union[int, list] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list:
        """As :meth:`StagedModelMixin.prune_intermediate_layers`; without the conv ``norm`` the features are the last
        kept stage's."""
        take = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        chs = self.feature_info[len(self.stages) - 1]['num_chs']
        if isinstance(self.norm, nn.Identity) and self.num_features != chs:
            self.num_features = self.head_hidden_size = chs
            self.reset_classifier(self.num_classes)  # a classifier that fits the stage's features
        return take


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official RAVLT checkpoint (``classfication/RALA.py`` keys) to this module's layout.

    Accepts a plain state dict or one wrapped as ``{'model': ...}`` / ``{'state_dict': ...}``; a dict already in this
    layout (``stem.*`` keys) is only checked. Official keys are renamed (see the module notes); the layer-scale
    vectors ``[1, C, 1, 1]`` and the 1x1-conv classifier ``[K, C, 1, 1]`` are flattened.

    Raises:
        ValueError: the converted dict does not have exactly the model's keys and shapes (the classifier and the
            first conv excepted: the loaders adapt them to ``num_classes`` / ``in_chans``).
    """
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith('stem.') for k in state_dict):
        out = dict(state_dict)
    else:
        out = _from_official(state_dict)
    check_state_dict(out, model, exempt=loader_adapted_keys(model))
    return out


def _from_official(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official keys renamed; the layer scales and the 1x1-conv classifier flattened (:func:`checkpoint_filter_fn`)."""
    rules = [
        (r'^patch_embed\.proj\.', 'stem.'),
        (r'^layers\.(\d+)\.downsample\.', lambda m: f'stages.{int(m.group(1)) + 1}.downsample.'),
        (r'^layers\.(\d+)\.RoPE\.', r'stages.\1.rope.'),
        (r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.'),
        (r'\.norm([12])\.norm\.', r'.norm\1.'),
        (r'\.ffn\.dwconv\.', '.mlp.dwconv.'),
        (r'\.ffn\.', '.mlp.'),
        (r'\.gamma_([12])$', r'.ls\1.gamma'),
        (r'^proj\.', 'norm.proj.'),
        (r'^norm\.(weight|bias|running_mean|running_var|num_batches_tracked)$', r'norm.bn.\1'),
        (r'^head\.(weight|bias)$', r'head.fc.\1'),
    ]
    out = {}
    for k, v in rename_keys(state_dict, rules).items():
        if re.search(r'\.ls[12]\.gamma$', k) or k == 'head.fc.weight':
            v = v.flatten(1) if k == 'head.fc.weight' else v.flatten()
        out[k] = v
    return out


def _create_ravlt(variant: str, pretrained: bool = False, **kwargs) -> RAVLT:
    cfg = model_cfgs[variant]
    out_indices = kwargs.pop('out_indices', tuple(range(len(cfg.depths))))
    return build_model(
        RAVLT, variant, pretrained,
        model_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


model_cfgs = dict(
    ravlt_tiny=RavltCfg(),
    ravlt_small=RavltCfg(embed_dims=(64, 128, 320, 512), depths=(3, 5, 9, 3), num_heads=(1, 2, 5, 8)),
    ravlt_base=RavltCfg(
        embed_dims=(96, 192, 384, 512), depths=(4, 6, 12, 6), num_heads=(1, 2, 6, 8),
        layer_scale=(1., 1., 1e-6, 1e-6)),
    ravlt_large=RavltCfg(
        embed_dims=(96, 192, 448, 640), depths=(4, 7, 19, 8), num_heads=(1, 2, 7, 10), layer_scale=(1e-6,) * 4),
    # tiny variant for tests (32x32 inputs): RALA in stages 1-2, softmax in 3-4 as released
    ravlt_test=RavltCfg(embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4), mlp_ratio=2.,
                        head_hidden_size=96),
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
        'first_conv': 'stem.0',
        'classifier': 'head.fc',
        'custom_load': True,  # files and URLs go through PretrainedFileMixin.load_pretrained
        'license': 'unknown',
        'origin_url': 'https://github.com/qhfan/RALA',
        'paper_ids': 'arXiv:2411.07635',
        'paper_name': 'Breaking the Low-Rank Dilemma of Linear Attention',
        **kwargs,
    }


_HF = 'https://huggingface.co/aldjalkdf/RAVLT/resolve/main/{}.pth'

default_cfgs = generate_default_cfgs({
    'ravlt_tiny.in1k': _cfg(_HF.format('RAVLT_T')),
    'ravlt_small.in1k': _cfg(_HF.format('RAVLT_S')),
    'ravlt_base.in1k': _cfg(_HF.format('RAVLT_B')),
    'ravlt_large.in1k': _cfg(_HF.format('RAVLT_L')),
    'ravlt_test': _cfg(input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0),
})


@register_model
def ravlt_tiny(pretrained: bool = False, **kwargs) -> RAVLT:
    return _create_ravlt('ravlt_tiny', pretrained=pretrained, **kwargs)


@register_model
def ravlt_small(pretrained: bool = False, **kwargs) -> RAVLT:
    return _create_ravlt('ravlt_small', pretrained=pretrained, **kwargs)


@register_model
def ravlt_base(pretrained: bool = False, **kwargs) -> RAVLT:
    return _create_ravlt('ravlt_base', pretrained=pretrained, **kwargs)


@register_model
def ravlt_large(pretrained: bool = False, **kwargs) -> RAVLT:
    return _create_ravlt('ravlt_large', pretrained=pretrained, **kwargs)


@register_model
def ravlt_test(pretrained: bool = False, **kwargs) -> RAVLT:
    return _create_ravlt('ravlt_test', pretrained=pretrained, **kwargs)
