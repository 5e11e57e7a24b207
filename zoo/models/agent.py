"""Agent-attention vision transformers: Agent-Swin, Agent-PVT, Agent-DeiT.

Paper:
    `Agent Attention: On the Integration of Softmax and Linear Attention` - https://arxiv.org/abs/2312.08874
    (ECCV 2024)

    @inproceedings{han2024agent,
        title = {Agent Attention: On the Integration of Softmax and Linear Attention},
        author = {Han, Dongchen and Ye, Tianzhu and Han, Yizeng and Xia, Zhuofan and Pan, Siyuan and Wan, Pengfei
                  and Song, Shiji and Huang, Gao},
        booktitle = {European Conference on Computer Vision (ECCV)},
        year = {2024},
    }

Architecture and released weights: https://github.com/LeapLabTHU/Agent-Attention (``agent_transformer``). This is an
independent implementation on the shared backbones (:mod:`zoo.models._swin_like`, :mod:`zoo.models._deit_like`,
:mod:`zoo.models._pvt_like`) with :class:`~zoo.layers.AgentAttention` /
:class:`~zoo.layers.AgentSpatialReductionAttentionCl` as the family attention.

* Agent-Swin: Swin-T/S/B with the official attention-type strings (T ``AAAB``, S ``AABB``, B ``AAMB2``) and
  ``WINDOW_SIZE`` 56 / 72 / 96: every agent block is global over its stage; the 'B' blocks are Swin window
  attention (7x7, 9x9 at 288 px, 12x12 at 384 px). Agents per stage 9, 16, 49, 49.
* Agent-PVT: PVTv1 layout (per-stage patch embeds and position embeddings), agent attention in every block without
  spatial reduction, **no final norm** (the head sees the token mean).
* Agent-DeiT: DeiT-T/S/B with 49 agents (81 for B); B uses agent attention in its first 4 blocks only.

Notes:
    * Any input size for Swin / PVT (the stems pad, the agent biases interpolate to the stage maps; see
      :mod:`zoo.layers.agent_attention`), DeiT at any size its position embedding resamples to.
    * ``drop_path_rate`` defaults to 0; the official trainings used Swin T/S/B 0.2/0.3/0.5, PVT T/S 0.1, M/L 0.3,
      DeiT T 0.0, S 0.1, B 0.3.
    * Pretrained cfgs point at the official checkpoints (cloud.tsinghua.edu.cn), converted on load by
      :func:`checkpoint_filter_fn` (key renames only).
"""
from __future__ import annotations

import re
from functools import partial
from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from zoo.layers import AgentAttention, AgentSpatialReductionAttentionCl, agent_pool_size
from zoo.layers.agent_attention import resize_bias_axis

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

__all__ = ['AgentSwin', 'AgentPvt', 'AgentDeit', 'checkpoint_filter_fn']

# official agent_deit.py: block i takes agent_num[_DEIT_STAGE[i // 2]] (all entries equal in the released cfgs)
_DEIT_STAGE = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}


def _check_agent_num(agent_num: Sequence[int], n: int) -> Tuple[int, ...]:
    agent_num = tuple(int(a) for a in agent_num)
    if len(agent_num) != n:
        raise ValueError(f'agent_num must give {n} entries (one per stage), got agent_num={agent_num}')
    for a in agent_num:
        agent_pool_size(a)
    return agent_num


def _family_arg(family: Dict[str, Any], key: str) -> Any:
    """``family[key]``, or a ValueError naming the missing entry (a ``family_kwargs`` given without it)."""
    if key not in family:
        raise ValueError(f'{key} is not set: pass {key}=(one value per stage), or a family_kwargs that holds it, '
                         f'got family_kwargs={tuple(family.items())!r}')
    return family[key]


def _overlay(cfg, kwargs: Dict[str, Any], cls_name: str):
    cfg = overlay_cfg(cfg, kwargs)
    agent_num = kwargs.pop('agent_num', None)
    if agent_num is not None:
        cfg = overlay_cfg(cfg, {'family_kwargs': (('agent_num', tuple(agent_num)),)})
    return cfg


def _agent_layer(agent_num: Tuple[int, ...], stage_of, num_prefix_tokens: int, stage: int, index: int, dim: int,
                 num_heads: int, resolution: Tuple[int, int], attn_drop: float = 0., proj_drop: float = 0.,
                 device=None, dtype=None, **kwargs) -> nn.Module:
    return AgentAttention(
        dim, num_heads, agent_num=agent_num[stage_of(stage, index)], resolution=resolution,
        num_prefix_tokens=num_prefix_tokens, qkv_bias=True, attn_drop=attn_drop, proj_drop=proj_drop,
        device=device, dtype=dtype)


class AgentSwin(SwinLike):
    """Agent-Swin (:class:`~zoo.models._swin_like.SwinLike` with agent attention as the 'A' letter)."""

    def __init__(self, cfg: SwinLikeCfg, **kwargs):
        """
        Args:
            cfg: architecture; ``cfg.family_kwargs`` holds ``agent_num`` (one per stage).
            **kwargs: :class:`SwinLikeCfg` fields (``img_size``, ``window_size``, ``attn_type`` ...), ``agent_num``
                and the :class:`SwinLike` arguments.

        Raises:
            ValueError: an ``agent_num`` that is not a perfect square, or any invalid argument.
        """
        cfg = _overlay(cfg, kwargs, 'AgentSwin')
        agent_num = _check_agent_num(_family_arg(dict(cfg.family_kwargs), 'agent_num'), len(cfg.depths))
        factory = partial(_agent_layer, agent_num, lambda stage, index: stage, 0)
        super().__init__(cfg, factory, 'A', **kwargs)


def _agent_pvt_layer(stage: int, index: int, dim: int, num_heads: int, resolution: Tuple[int, int],
                     agent_num: Tuple[int, ...], agent_sr_ratios: Tuple[int, ...], attn_drop: float = 0.,
                     proj_drop: float = 0., device=None, dtype=None, **kwargs) -> nn.Module:
    return AgentSpatialReductionAttentionCl(
        dim, num_heads, agent_num=agent_num[stage], resolution=resolution, sr_ratio=agent_sr_ratios[stage],
        qkv_bias=True, attn_drop=attn_drop, proj_drop=proj_drop, device=device, dtype=dtype)


class AgentPvt(PvtLike):
    """Agent-PVT (:class:`~zoo.models._pvt_like.PvtLike` with agent attention as the 'A' letter, no final norm)."""

    def __init__(self, cfg: PvtLikeCfg, **kwargs):
        """
        Args:
            cfg: architecture; ``cfg.family_kwargs`` holds ``agent_num`` and ``agent_sr_ratios`` (one per stage;
                the official ``PVT_LA_SR_RATIOS``, 1 in every released model). ``attn_type`` takes the official
                letters: 'A' agent, 'B' (or 'S') PVT's plain spatial-reduction attention with ``sr_ratios``.
            **kwargs: :class:`PvtLikeCfg` fields, ``agent_num``, ``agent_sr_ratios`` and the :class:`PvtLike`
                arguments.

        Raises:
            ValueError: an ``agent_num`` that is not a perfect square, or any invalid argument.
        """
        cfg = overlay_cfg(cfg, kwargs)
        family = dict(cfg.family_kwargs)
        for key in ('agent_num', 'agent_sr_ratios'):
            if key in kwargs:
                family[key] = tuple(kwargs.pop(key))
        n = len(cfg.depths)
        family['agent_num'] = _check_agent_num(_family_arg(family, 'agent_num'), n)
        sr = tuple(int(r) for r in _family_arg(family, 'agent_sr_ratios'))
        if len(sr) != n or any(r < 1 for r in sr):
            raise ValueError(f'agent_sr_ratios must give one int >= 1 per stage ({n}), got agent_sr_ratios={sr}')
        family['agent_sr_ratios'] = sr
        # the official plain-attention letter is 'B'; the shared PVT backbone calls it 'S'
        cfg = overlay_cfg(cfg, {'family_kwargs': tuple(family.items()), 'attn_type': cfg.attn_type.replace('B', 'S')})
        super().__init__(cfg, _agent_pvt_layer, 'A', **kwargs)


class AgentDeit(DeitLike):
    """Agent-DeiT (:class:`~zoo.models._deit_like.DeitLike` with agent attention in the first ``family_depth``
    blocks)."""

    def __init__(self, cfg: DeitLikeCfg, **kwargs):
        """
        Args:
            cfg: architecture; ``cfg.family_kwargs`` holds ``agent_num`` (4 entries, the official per-"stage" list:
                block ``i`` takes entry ``{0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}[i // 2]``).
            **kwargs: :class:`DeitLikeCfg` fields, ``agent_num`` and the :class:`DeitLike` arguments.

        Raises:
            ValueError: an ``agent_num`` that is not a perfect square, or any invalid argument.
        """
        cfg = _overlay(cfg, kwargs, 'AgentDeit')
        agent_num = _check_agent_num(_family_arg(dict(cfg.family_kwargs), 'agent_num'), 4)

        def stage_of(stage: int, index: int) -> int:
            return _DEIT_STAGE.get(index // 2, 3)

        super().__init__(cfg, partial(_agent_layer, agent_num, stage_of, 1), **kwargs)


# ------------------------------------------------------------------------------------------------ checkpoints
_BUFFERS = re.compile(r'(relative_position_index|attn_mask)$')


_ROW_COL = re.compile(r'\.(ah|aw|ha|wa)_bias$')


def _resize_row_col_biases(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Agent row / column biases of a checkpoint trained at another resolution, linearly interpolated along their
    axis to the model's (the rule the layers apply to other map sizes at run time)."""
    target = model.state_dict()
    out = dict(state_dict)
    for key, value in state_dict.items():
        if _ROW_COL.search(key) and key in target and value.dim() == target[key].dim() == 5:
            want = target[key].shape
            for dim in (2, 3, 4):
                if value.shape[dim] != want[dim]:
                    value = resize_bias_axis(value, want[dim], dim)
            out[key] = value
    return out


def _filter_swin(state_dict: Dict[str, torch.Tensor], model: AgentSwin) -> Dict[str, torch.Tensor]:
    if any(k.startswith(('stages.', 'head.fc.')) for k in state_dict):
        out = dict(state_dict)
    else:
        state_dict = {k: v for k, v in state_dict.items() if not _BUFFERS.search(k)}
        out = _resize_row_col_biases(rename_keys(state_dict, swin_like_rename_rules()), model)
    check_state_dict(out, model, exempt=loader_adapted_keys(model, 'head.fc'))
    return out


def _filter_deit(state_dict: Dict[str, torch.Tensor], model: AgentDeit) -> Dict[str, torch.Tensor]:
    out = resample_checkpoint_pos_embed(_resize_row_col_biases(state_dict, model), model, 'bilinear')
    weight = out.get('patch_embed.proj.weight')
    if weight is not None and weight.dim() < 4 and weight.numel() == model.patch_embed.proj.weight.numel():
        # timm's conversion of linear patch embeddings
        out['patch_embed.proj.weight'] = weight.reshape(model.patch_embed.proj.weight.shape)
    check_state_dict(out, model, exempt=loader_adapted_keys(model, 'head'))
    return out


def _filter_pvt(state_dict: Dict[str, torch.Tensor], model: AgentPvt) -> Dict[str, torch.Tensor]:
    if any(k.startswith(('stages.', 'head.fc.')) for k in state_dict):
        out = dict(state_dict)
    else:
        out = _resize_row_col_biases(rename_keys(state_dict, pvt_like_rename_rules()), model)
    check_state_dict(out, model, exempt=loader_adapted_keys(model, 'head.fc'))
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official Agent-Swin / Agent-PVT / Agent-DeiT checkpoint to this module's layout.

    Accepts a plain state dict or one wrapped as ``{'model': ...}`` / ``{'state_dict': ...}``.

    * Agent-Swin: ``layers.i.blocks`` -> ``stages.i.blocks``, ``layers.i.downsample`` -> ``stages.{i+1}.downsample``,
      window blocks' ``attn.relative_position_bias_table`` -> ``attn.rel_pos.relative_position_bias_table``,
      ``head`` -> ``head.fc``; the ``relative_position_index`` / ``attn_mask`` buffers are dropped.
    * Agent-DeiT: official names are kept; ``pos_embed`` is resampled (bilinear, as the official filter) when the
      model's patch grid differs.
    * Agent-PVT: ``patch_embed1`` -> ``patch_embed``, ``patch_embed{i+1}`` -> ``stages.i.downsample``,
      ``pos_embed{i+1}`` -> ``stages.i.pos_embed``, ``block{i+1}.j`` -> ``stages.i.blocks.j``, ``head`` -> ``head.fc``.

    A checkpoint trained at another resolution (a model built with another ``img_size``) gets its agent row / column
    biases (``ah/aw/ha/wa_bias``) linearly interpolated along their axis, the rule the layers use at run time.

    A dict already in this layout passes unchanged.

    Raises:
        ValueError: the converted dict does not have exactly the model's keys and shapes (the classifier and the
            first conv excepted: timm adapts them to ``num_classes`` / ``in_chans``).
    """
    state_dict = unwrap_state_dict(state_dict)
    if isinstance(model, AgentSwin):
        return _filter_swin(state_dict, model)
    if isinstance(model, AgentDeit):
        return _filter_deit(state_dict, model)
    if isinstance(model, AgentPvt):
        return _filter_pvt(state_dict, model)
    raise ValueError(f'checkpoint_filter_fn converts Agent-Swin / -PVT / -DeiT checkpoints, got {type(model).__name__}')


# ------------------------------------------------------------------------------------------------- variants
def _swin(embed_dim, depths, num_heads, attn_type, window_size=56, img_size=224, agent_num=(9, 16, 49, 49)):
    return SwinLikeCfg(embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
                       attn_type=attn_type, img_size=img_size, family_kwargs=(('agent_num', agent_num),))


def _pvt(depths, img_size=224, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
         agent_num=(9, 16, 49, 49)):
    return PvtLikeCfg(embed_dims=embed_dims, depths=depths, num_heads=num_heads, mlp_ratios=mlp_ratios,
                      sr_ratios=(8, 4, 2, 1), attn_type='AAAA', img_size=img_size,
                      family_kwargs=(('agent_num', agent_num), ('agent_sr_ratios', (1, 1, 1, 1))))


def _deit(embed_dim, num_heads, agent_num=49, family_depth=-1, img_size=224, depth=12, patch_size=16):
    return DeitLikeCfg(embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size,
                       img_size=img_size, family_depth=family_depth, family_kwargs=(('agent_num', (agent_num,) * 4),))


_S = (2, 2, 18, 2)
model_cfgs = dict(
    agent_swin_tiny=_swin(96, (2, 2, 6, 2), (3, 6, 12, 24), 'AAAB'),
    agent_swin_small=_swin(96, _S, (3, 6, 12, 24), 'AABB'),
    agent_swin_small_288=_swin(96, _S, (3, 6, 12, 24), 'AABB', window_size=72, img_size=288),
    agent_swin_base=_swin(128, _S, (4, 8, 16, 32), 'AAMB2'),
    agent_swin_base_384=_swin(128, _S, (4, 8, 16, 32), 'AAMB2', window_size=96, img_size=384),
    # tiny: a shifted, padded Swin-window stage, global agent stages, a mixed stage
    # (tiny Swin / PVT: stage 0 is 16 x 16 x 20 at 64 px; 20, not 16 channels, so that timm's tests can tell an
    # NHWC feature from an NCHW one by its shape)
    agent_swin_test=_swin(20, (2, 1, 2, 1), (1, 2, 4, 8), 'BAMB1', window_size=16, img_size=64,
                          agent_num=(4, 4, 4, 4)),

    agent_pvt_tiny=_pvt((2, 2, 2, 2)),
    agent_pvt_small=_pvt((3, 4, 6, 3)),
    agent_pvt_medium=_pvt((3, 4, 18, 3)),
    agent_pvt_medium_256=_pvt((3, 4, 18, 3), img_size=256),
    agent_pvt_large=_pvt((3, 8, 27, 3)),
    agent_pvt_test=_pvt((1, 2, 1, 1), img_size=64, embed_dims=(20, 40, 80, 160), num_heads=(1, 2, 4, 8),
                        mlp_ratios=(2, 2, 2, 2), agent_num=(4, 4, 4, 1)),

    agent_deit_tiny=_deit(192, 3),
    agent_deit_small=_deit(384, 6),
    agent_deit_small_448=_deit(384, 6, img_size=448),
    agent_deit_base=_deit(768, 12, agent_num=81, family_depth=4),
    agent_deit_test=_deit(32, 2, agent_num=4, family_depth=3, depth=4, img_size=64),
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
        'origin_url': 'https://github.com/LeapLabTHU/Agent-Attention',
        'paper_ids': 'arXiv:2312.08874',
        'paper_name': 'Agent Attention: On the Integration of Softmax and Linear Attention',
        **kwargs,
    }


def _deit_cfg(url_id: str = '', **kwargs) -> Dict:
    return _cfg(url_id, **{'pool_size': (14, 14), 'classifier': 'head', **kwargs})


default_cfgs = generate_default_cfgs({
    'agent_swin_tiny.in1k': _cfg('a2ddc1190c224f768a41'),
    'agent_swin_small.in1k': _cfg('f607172c9fea4d6e99bb'),
    'agent_swin_small_288.in1k': _cfg('09760394e93b4046a25e', input_size=(3, 288, 288), pool_size=(9, 9),
                                      crop_pct=1.0),
    'agent_swin_base.in1k': _cfg('4fcd2d0114bb490483c3'),
    'agent_swin_base_384.in1k': _cfg('bb84ee9058954706a557', input_size=(3, 384, 384), pool_size=(12, 12),
                                     crop_pct=1.0),
    'agent_pvt_tiny.in1k': _cfg('13fdf0e0a7c5498c934f'),
    'agent_pvt_small.in1k': _cfg('36b8be9a8863456685a3'),
    'agent_pvt_medium.in1k': _cfg('4d00ecacf18b45f9b88c'),
    'agent_pvt_medium_256.in1k': _cfg('654df734121643b19c52', input_size=(3, 256, 256), pool_size=(8, 8),
                                      crop_pct=1.0),
    'agent_pvt_large.in1k': _cfg('040cfe0cfbbe4762ad09'),
    'agent_deit_tiny.in1k': _deit_cfg('57e0904221824ee7b7af'),
    'agent_deit_small.in1k': _deit_cfg('fdd43304372541db8ea7'),
    'agent_deit_small_448.in1k': _deit_cfg('a228f86241c445f1969b', input_size=(3, 448, 448), pool_size=(28, 28),
                                           crop_pct=1.0),
    'agent_deit_base.in1k': _deit_cfg('5115f15fdd7e4ab58fbc'),
    'agent_swin_test': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    'agent_pvt_test': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    'agent_deit_test': _deit_cfg(input_size=(3, 64, 64), pool_size=(4, 4), crop_pct=1.0),
})


@register_model
def agent_swin_tiny(pretrained: bool = False, **kwargs) -> AgentSwin:
    """Agent-Swin-T @ 224 (``AAAB``)."""
    return _create(AgentSwin, 'agent_swin_tiny', pretrained, **kwargs)


@register_model
def agent_swin_small(pretrained: bool = False, **kwargs) -> AgentSwin:
    """Agent-Swin-S @ 224 (``AABB``)."""
    return _create(AgentSwin, 'agent_swin_small', pretrained, **kwargs)


@register_model
def agent_swin_small_288(pretrained: bool = False, **kwargs) -> AgentSwin:
    """Agent-Swin-S @ 288 (window 72: agent blocks global, Swin blocks 9x9)."""
    return _create(AgentSwin, 'agent_swin_small_288', pretrained, **kwargs)


@register_model
def agent_swin_base(pretrained: bool = False, **kwargs) -> AgentSwin:
    """Agent-Swin-B @ 224 (``AAMB2``)."""
    return _create(AgentSwin, 'agent_swin_base', pretrained, **kwargs)


@register_model
def agent_swin_base_384(pretrained: bool = False, **kwargs) -> AgentSwin:
    """Agent-Swin-B @ 384 (window 96: agent blocks global, Swin blocks 12x12)."""
    return _create(AgentSwin, 'agent_swin_base_384', pretrained, **kwargs)


@register_model
def agent_swin_test(pretrained: bool = False, **kwargs) -> AgentSwin:
    """Tiny Agent-Swin for tests (64 px)."""
    return _create(AgentSwin, 'agent_swin_test', pretrained, **kwargs)


@register_model
def agent_pvt_tiny(pretrained: bool = False, **kwargs) -> AgentPvt:
    """Agent-PVT-T @ 224."""
    return _create(AgentPvt, 'agent_pvt_tiny', pretrained, **kwargs)


@register_model
def agent_pvt_small(pretrained: bool = False, **kwargs) -> AgentPvt:
    """Agent-PVT-S @ 224."""
    return _create(AgentPvt, 'agent_pvt_small', pretrained, **kwargs)


@register_model
def agent_pvt_medium(pretrained: bool = False, **kwargs) -> AgentPvt:
    """Agent-PVT-M @ 224."""
    return _create(AgentPvt, 'agent_pvt_medium', pretrained, **kwargs)


@register_model
def agent_pvt_medium_256(pretrained: bool = False, **kwargs) -> AgentPvt:
    """Agent-PVT-M @ 256."""
    return _create(AgentPvt, 'agent_pvt_medium_256', pretrained, **kwargs)


@register_model
def agent_pvt_large(pretrained: bool = False, **kwargs) -> AgentPvt:
    """Agent-PVT-L @ 224 (official config file ``agent_pvt_b.yaml``)."""
    return _create(AgentPvt, 'agent_pvt_large', pretrained, **kwargs)


@register_model
def agent_pvt_test(pretrained: bool = False, **kwargs) -> AgentPvt:
    """Tiny Agent-PVT for tests (64 px)."""
    return _create(AgentPvt, 'agent_pvt_test', pretrained, **kwargs)


@register_model
def agent_deit_tiny(pretrained: bool = False, **kwargs) -> AgentDeit:
    """Agent-DeiT-T @ 224 (49 agents, all blocks)."""
    return _create(AgentDeit, 'agent_deit_tiny', pretrained, **kwargs)


@register_model
def agent_deit_small(pretrained: bool = False, **kwargs) -> AgentDeit:
    """Agent-DeiT-S @ 224 (49 agents, all blocks)."""
    return _create(AgentDeit, 'agent_deit_small', pretrained, **kwargs)


@register_model
def agent_deit_small_448(pretrained: bool = False, **kwargs) -> AgentDeit:
    """Agent-DeiT-S @ 448 (bias grid 28x28)."""
    return _create(AgentDeit, 'agent_deit_small_448', pretrained, **kwargs)


@register_model
def agent_deit_base(pretrained: bool = False, **kwargs) -> AgentDeit:
    """Agent-DeiT-B @ 224 (81 agents in the first 4 blocks, softmax attention after)."""
    return _create(AgentDeit, 'agent_deit_base', pretrained, **kwargs)


@register_model
def agent_deit_test(pretrained: bool = False, **kwargs) -> AgentDeit:
    """Tiny Agent-DeiT for tests (64 px)."""
    return _create(AgentDeit, 'agent_deit_test', pretrained, **kwargs)
