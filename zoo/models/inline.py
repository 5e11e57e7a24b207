"""InLine-attention vision transformers: InLine-Swin, InLine-PVT, InLine-DeiT.

Paper:
    `Bridging the Divide: Reconsidering Softmax and Linear Attention` - https://arxiv.org/abs/2412.06590
    (NeurIPS 2024)

    @inproceedings{han2024inline,
        title = {Bridging the Divide: Reconsidering Softmax and Linear Attention},
        author = {Han, Dongchen and Pu, Yifan and Xia, Zhuofan and Han, Yizeng and Pan, Xuran and Li, Xiu and Lu,
                  Jiwen and Song, Shiji and Huang, Gao},
        booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
        year = {2024},
    }

Architecture and released weights: https://github.com/LeapLabTHU/InLine (``models/inline_{swin,pvt,deit}.py``,
``cfgs/*.yaml``). This is an independent implementation on the shared backbones (:mod:`zoo.models._swin_like`,
:mod:`zoo.models._pvt_like`, :mod:`zoo.models._deit_like`) with :class:`~zoo.layers.InLineAttention` (injective
linear attention + per-sample 3x3 local residual) as the family attention, letter ``'I'``.

* InLine-Swin: Swin-T/S/B with the official attention-type strings (T ``IIIS``, S ``IISS``, B ``IIMS2``) and
  ``WINDOW_SIZE`` 56 (96 for the 384 px B config): every InLine block is global over its stage; the 'S' blocks are
  Swin window attention (7x7; 12x12 at 384 px).
* InLine-PVT: PVTv1 layout (per-stage patch embeds and position embeddings), heads 2, 4, 10, 16, InLine attention in
  every block without spatial reduction (``q`` / ``kv`` Linears), **no final norm** (the head sees the token mean).
* InLine-DeiT: 12 blocks of InLine attention over the class token and the patches. "S" and "B" are not DeiT-S/B:
  T is 192-d with 6 heads at 224 px, S 320-d with 10 heads at 288 px, B 384-d with 12 heads at 448 px.

Notes:
    * **The README and the code disagree on two parameter counts; these models follow the code.** InLine-Swin-T as
      built from ``cfgs/inline_swin_t.yaml`` (``IIIS``) has 29,223,544 parameters where the README says 30M (an
      all-InLine ``IIII`` model would have 29,722,312); InLine-PVT-L has 51,154,280 where the README says 50.2M (no
      attention-type choice gives 50.2M). ``attn_type='IIII'`` builds the all-InLine Swin-T if a checkpoint needs it
      (the released checkpoint's keys decide: stage-4 ``attn.residual.*`` vs ``relative_position_bias_table``).
    * ``inline_swin_base_384`` is the official ``cfgs/inline_swin_b_384.yaml`` (fine-tuning config); no checkpoint
      was released for it.
    * Any input size for Swin / PVT (stems pad, global InLine blocks take any map, PVT position embeddings resample
      bilinearly as the official code), DeiT at any size its position embedding resamples to.
    * ``drop_path_rate`` defaults to 0; the official trainings used Swin T/S/B 0.2/0.3/0.5, PVT T/S 0.1, M/L 0.3,
      DeiT 0.1.
    * Pretrained cfgs point at the official checkpoints (cloud.tsinghua.edu.cn), converted on load by
      :func:`checkpoint_filter_fn` (key renames only).
"""
from __future__ import annotations

import re
from functools import partial
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from zoo.layers import InLineAttention
from zoo.layers.inline_attention import INLINE_KERNELS

from ._deit_like import DeitLike, DeitLikeCfg, resample_checkpoint_pos_embed
from ._helpers import (
    build_model,
    check_state_dict,
    loader_adapted_keys,
    overlay_cfg,
    rename_keys,
    unwrap_state_dict,
)
from ._pvt_like import PvtLike, PvtLikeCfg, pvt_like_rename_rules
from ._swin_like import SwinLike, SwinLikeCfg, swin_like_rename_rules

# checkpoint_filter_fn stays out of __all__: zoo.models star-imports every family
__all__ = ['InLineSwin', 'InLinePvt', 'InLineDeit']


def _overlay(cfg, kwargs: Dict[str, Any]):
    """``cfg`` with the cfg fields in ``kwargs`` and a ``kernel_func`` keyword folded in (both popped)."""
    cfg = overlay_cfg(cfg, kwargs)
    kernel_func = kwargs.pop('kernel_func', None)
    if kernel_func is not None:
        if kernel_func not in INLINE_KERNELS:
            raise ValueError(f'kernel_func must be one of {INLINE_KERNELS}, got kernel_func={kernel_func!r}')
        family = dict(cfg.family_kwargs)
        family['kernel_func'] = kernel_func
        cfg = overlay_cfg(cfg, {'family_kwargs': tuple(sorted(family.items()))})
    return cfg


def _inline_layer(qkv_layout: str, num_prefix_tokens: int, stage: int, index: int, dim: int, num_heads: int,
                  resolution: Tuple[int, int], attn_drop: float = 0., proj_drop: float = 0.,
                  kernel_func: str = 'identity', device=None, dtype=None, **kwargs) -> nn.Module:
    return InLineAttention(
        dim, num_heads, qkv_bias=True, qkv_layout=qkv_layout, num_prefix_tokens=num_prefix_tokens,
        kernel_func=kernel_func, attn_drop=attn_drop, proj_drop=proj_drop, device=device, dtype=dtype)


class InLineSwin(SwinLike):
    """InLine-Swin (:class:`~zoo.models._swin_like.SwinLike` with InLine attention as the 'I' letter)."""

    def __init__(self, cfg: SwinLikeCfg, **kwargs):
        """
        Args:
            cfg: architecture.
            **kwargs: :class:`SwinLikeCfg` fields (``img_size``, ``window_size``, ``attn_type`` ...), ``kernel_func``
                (one of :data:`~zoo.layers.inline_attention.INLINE_KERNELS`) and the :class:`SwinLike` arguments.

        Raises:
            ValueError: an invalid argument, naming it.
        """
        cfg = _overlay(cfg, kwargs)
        factory = partial(_inline_layer, 'qkv', 0, **dict(cfg.family_kwargs))
        super().__init__(cfg, factory, 'I', **kwargs)


class InLinePvt(PvtLike):
    """InLine-PVT (:class:`~zoo.models._pvt_like.PvtLike` with InLine attention as the 'I' letter)."""

    def __init__(self, cfg: PvtLikeCfg, **kwargs):
        """
        Args:
            cfg: architecture.
            **kwargs: :class:`PvtLikeCfg` fields (``img_size``, ``attn_type`` ...), ``kernel_func`` and the
                :class:`PvtLike` arguments.

        Raises:
            ValueError: an invalid argument, naming it.
        """
        cfg = _overlay(cfg, kwargs)
        # family_kwargs reach the factory through PvtLike
        super().__init__(cfg, partial(_inline_layer, 'q_kv', 0), 'I', **kwargs)


class InLineDeit(DeitLike):
    """InLine-DeiT (:class:`~zoo.models._deit_like.DeitLike` with InLine attention over class + patch tokens)."""

    def __init__(self, cfg: DeitLikeCfg, **kwargs):
        """
        Args:
            cfg: architecture.
            **kwargs: :class:`DeitLikeCfg` fields, ``kernel_func`` and the :class:`DeitLike` arguments.

        Raises:
            ValueError: an invalid argument, naming it.
        """
        cfg = _overlay(cfg, kwargs)
        super().__init__(cfg, partial(_inline_layer, 'qkv', 1, **dict(cfg.family_kwargs)), **kwargs)


# ------------------------------------------------------------------------------------------------ checkpoints
_BUFFERS = re.compile(r'(relative_position_index|attn_mask)$')


def _filter_staged(state_dict: Dict[str, torch.Tensor], model: nn.Module, rules) -> Dict[str, torch.Tensor]:
    if any(k.startswith(('stages.', 'head.fc.')) for k in state_dict):
        out = dict(state_dict)
    else:
        state_dict = {k: v for k, v in state_dict.items() if not _BUFFERS.search(k)}
        out = rename_keys(state_dict, rules)
    check_state_dict(out, model, exempt=loader_adapted_keys(model, 'head.fc'))
    return out


def _filter_deit(state_dict: Dict[str, torch.Tensor], model: InLineDeit) -> Dict[str, torch.Tensor]:
    out = resample_checkpoint_pos_embed(state_dict, model, 'bicubic')
    check_state_dict(out, model, exempt=loader_adapted_keys(model, 'head'))
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official InLine-Swin / InLine-PVT / InLine-DeiT checkpoint to this module's layout.

    Accepts a plain state dict or one wrapped as ``{'model': ...}`` / ``{'state_dict': ...}``.

    * InLine-Swin: ``layers.i.blocks`` -> ``stages.i.blocks``, ``layers.i.downsample`` -> ``stages.{i+1}.downsample``,
      Swin blocks' ``attn.relative_position_bias_table`` -> ``attn.rel_pos.relative_position_bias_table``,
      ``head`` -> ``head.fc``; the ``relative_position_index`` / ``attn_mask`` buffers are dropped.
    * InLine-PVT: ``patch_embed1`` -> ``patch_embed``, ``patch_embed{i+1}`` -> ``stages.i.downsample``,
      ``pos_embed{i+1}`` -> ``stages.i.pos_embed``, ``block{i+1}`` -> ``stages.i.blocks``, ``head`` -> ``head.fc``.
    * InLine-DeiT: official names are kept; ``pos_embed`` is resampled (bicubic, timm's) when the model's patch grid
      differs from the checkpoint's.

    A dict already in this layout passes unchanged. InLine attention keys (``qkv`` or ``q`` / ``kv``, ``residual.0``,
    ``residual.2``, ``proj``) are the official ones.

    Raises:
        ValueError: the converted dict does not have exactly the model's keys and shapes (the classifier and the
            first conv excepted: timm adapts them to ``num_classes`` / ``in_chans``), or ``model`` is not an InLine
            model.
    """
    state_dict = unwrap_state_dict(state_dict)
    if isinstance(model, InLineSwin):
        return _filter_staged(state_dict, model, swin_like_rename_rules())
    if isinstance(model, InLinePvt):
        return _filter_staged(state_dict, model, pvt_like_rename_rules())
    if isinstance(model, InLineDeit):
        return _filter_deit(state_dict, model)
    raise ValueError(f'checkpoint_filter_fn converts InLine-Swin / -PVT / -DeiT checkpoints, '
                     f'got {type(model).__name__}')


# ------------------------------------------------------------------------------------------------- variants
def _swin(embed_dim, depths, num_heads, attn_type, window_size=56, img_size=224):
    return SwinLikeCfg(embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
                       attn_type=attn_type, img_size=img_size)


def _pvt(depths, embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16), mlp_ratios=(8, 8, 4, 4),
         sr_ratios=(8, 4, 2, 1), attn_type='IIII', img_size=224):
    return PvtLikeCfg(embed_dims=embed_dims, depths=depths, num_heads=num_heads, mlp_ratios=mlp_ratios,
                      sr_ratios=sr_ratios, attn_type=attn_type, img_size=img_size)


def _deit(embed_dim, num_heads, img_size=224, depth=12, patch_size=16):
    return DeitLikeCfg(embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size,
                       img_size=img_size)


_S = (2, 2, 18, 2)
model_cfgs = dict(
    inline_swin_tiny=_swin(96, (2, 2, 6, 2), (3, 6, 12, 24), 'IIIS'),
    inline_swin_small=_swin(96, _S, (3, 6, 12, 24), 'IISS'),
    inline_swin_base=_swin(128, _S, (4, 8, 16, 32), 'IIMS2'),
    inline_swin_base_384=_swin(128, _S, (4, 8, 16, 32), 'IIMS2', window_size=96, img_size=384),
    # tiny: a shifted, padded Swin-window stage, global InLine stages, a mixed stage
    inline_swin_test=_swin(20, (2, 1, 2, 1), (1, 2, 4, 8), 'SIMS1', window_size=16, img_size=64),
    inline_pvt_tiny=_pvt((2, 2, 2, 2)),
    inline_pvt_small=_pvt((3, 4, 6, 3)),
    inline_pvt_medium=_pvt((3, 4, 18, 3)),
    inline_pvt_large=_pvt((3, 8, 27, 3)),
    # tiny: InLine stages around a plain SRA stage (sr 2)
    inline_pvt_test=_pvt((1, 2, 1, 1), embed_dims=(20, 40, 80, 160), num_heads=(1, 2, 4, 8), mlp_ratios=(2, 2, 2, 2),
                         sr_ratios=(8, 4, 2, 1), attn_type='IISI', img_size=64),
    inline_deit_tiny=_deit(192, 6),
    inline_deit_small=_deit(320, 10, img_size=288),
    inline_deit_base=_deit(384, 12, img_size=448),
    inline_deit_test=_deit(32, 2, depth=3, img_size=64),
)


def _create(cls, variant: str, pretrained: bool = False, feature_cls: str = 'getter', **kwargs):
    cfg = model_cfgs[variant]
    n = cfg.depth if isinstance(cfg, DeitLikeCfg) else len(cfg.depths)
    out_indices = kwargs.pop('out_indices', tuple(range(n)))
    return build_model(
        cls, variant, pretrained,
        model_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls=feature_cls),
        **kwargs,
    )


_URL = 'https://cloud.tsinghua.edu.cn/f/{}/?dl=1'


def _cfg(url_id: str = '', **kwargs) -> Dict:
    return {
        'url': _URL.format(url_id) if url_id else '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': .875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head.fc',
        'custom_load': True,  # files and URLs go through PretrainedFileMixin.load_pretrained
        'license': 'mit',
        'origin_url': 'https://github.com/LeapLabTHU/InLine',
        'paper_ids': 'arXiv:2412.06590',
        'paper_name': 'Bridging the Divide: Reconsidering Softmax and Linear Attention',
        **kwargs,
    }


def _deit_cfg(url_id: str = '', **kwargs) -> Dict:
    return _cfg(url_id, **{'pool_size': (14, 14), 'classifier': 'head', **kwargs})


default_cfgs = generate_default_cfgs({
    'inline_swin_tiny.in1k': _cfg('32810869fcc34410966b'),
    'inline_swin_small.in1k': _cfg('e9657fd247c04c7cb1a1'),
    'inline_swin_base.in1k': _cfg('bf23564bb64c420aafe1'),
    # official cfgs/inline_swin_b_384.yaml (TEST.CROP False); no released checkpoint
    'inline_swin_base_384': _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    'inline_swin_test': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    'inline_pvt_tiny.in1k': _cfg('90ac52b1555b401eb5e6'),
    'inline_pvt_small.in1k': _cfg('1ab953b2479d433080a3'),
    'inline_pvt_medium.in1k': _cfg('a72aec31e6084bc0a280'),
    'inline_pvt_large.in1k': _cfg('efd91318ba964f01b288'),
    'inline_pvt_test': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    'inline_deit_tiny.in1k': _deit_cfg('1d6b8191ad6d4114b291'),
    'inline_deit_small.in1k': _deit_cfg('2f3898b07e9247f3beb3', input_size=(3, 288, 288), pool_size=(18, 18)),
    'inline_deit_base.in1k': _deit_cfg('10bdd726d4b0435eb34e', input_size=(3, 448, 448), pool_size=(28, 28)),
    'inline_deit_test': _deit_cfg(input_size=(3, 64, 64), pool_size=(4, 4), crop_pct=1.0),
})


@register_model
def inline_swin_tiny(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-T @ 224 (``IIIS``; 29.22M parameters as the code, the README's 30M aside)."""
    return _create(InLineSwin, 'inline_swin_tiny', pretrained, **kwargs)


@register_model
def inline_swin_small(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-S @ 224 (``IISS``)."""
    return _create(InLineSwin, 'inline_swin_small', pretrained, **kwargs)


@register_model
def inline_swin_base(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-B @ 224 (``IIMS2``)."""
    return _create(InLineSwin, 'inline_swin_base', pretrained, **kwargs)


@register_model
def inline_swin_base_384(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-B @ 384 (official fine-tuning cfg: window 96, Swin blocks 12x12; no released weights)."""
    return _create(InLineSwin, 'inline_swin_base_384', pretrained, **kwargs)


@register_model
def inline_swin_test(pretrained: bool = False, **kwargs) -> InLineSwin:
    """Tiny InLine-Swin for tests (64 px)."""
    return _create(InLineSwin, 'inline_swin_test', pretrained, **kwargs)


@register_model
def inline_pvt_tiny(pretrained: bool = False, **kwargs) -> InLinePvt:
    """InLine-PVT-T @ 224."""
    return _create(InLinePvt, 'inline_pvt_tiny', pretrained, **kwargs)


@register_model
def inline_pvt_small(pretrained: bool = False, **kwargs) -> InLinePvt:
    """InLine-PVT-S @ 224."""
    return _create(InLinePvt, 'inline_pvt_small', pretrained, **kwargs)


@register_model
def inline_pvt_medium(pretrained: bool = False, **kwargs) -> InLinePvt:
    """InLine-PVT-M @ 224."""
    return _create(InLinePvt, 'inline_pvt_medium', pretrained, **kwargs)


@register_model
def inline_pvt_large(pretrained: bool = False, **kwargs) -> InLinePvt:
    """InLine-PVT-L @ 224 (51.15M parameters as the code, the README's 50.2M aside)."""
    return _create(InLinePvt, 'inline_pvt_large', pretrained, **kwargs)


@register_model
def inline_pvt_test(pretrained: bool = False, **kwargs) -> InLinePvt:
    """Tiny InLine-PVT for tests (64 px)."""
    return _create(InLinePvt, 'inline_pvt_test', pretrained, **kwargs)


@register_model
def inline_deit_tiny(pretrained: bool = False, **kwargs) -> InLineDeit:
    """InLine-DeiT-T @ 224 (192-d, 6 heads)."""
    return _create(InLineDeit, 'inline_deit_tiny', pretrained, **kwargs)


@register_model
def inline_deit_small(pretrained: bool = False, **kwargs) -> InLineDeit:
    """InLine-DeiT-S @ 288 (320-d, 10 heads: not DeiT-S)."""
    return _create(InLineDeit, 'inline_deit_small', pretrained, **kwargs)


@register_model
def inline_deit_base(pretrained: bool = False, **kwargs) -> InLineDeit:
    """InLine-DeiT-B @ 448 (384-d, 12 heads: not DeiT-B)."""
    return _create(InLineDeit, 'inline_deit_base', pretrained, **kwargs)


@register_model
def inline_deit_test(pretrained: bool = False, **kwargs) -> InLineDeit:
    """Tiny InLine-DeiT for tests (64 px)."""
    return _create(InLineDeit, 'inline_deit_test', pretrained, **kwargs)
