"""A DeiT / ViT backbone whose attention is supplied by a family (Agent-DeiT, InLine-DeiT).

The Agent-DeiT and InLine-DeiT models of LeapLabTHU are timm-0.4.12 ``VisionTransformer``s (DeiT recipe) whose
first ``family_depth`` blocks use the family's attention and the rest timm's softmax ``Attention``. This module holds
the shared backbone, written against timm 1.x (the official code no longer imports there); each family supplies its
attention through a factory and renames its official keys in its own ``checkpoint_filter_fn``.

Layout (timm ViT / DeiT): ``patch_embed.proj`` (conv ``patch_size``) -> prepend ``cls_token`` -> add ``pos_embed``
``[1, 1 + N, C]`` -> blocks ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` (LN eps 1e-6, timm ``Mlp``) -> ``norm`` ->
class token -> ``head``. Parameter names are the official ones (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i.{norm1,attn,norm2,mlp}``, ``norm``, ``head``), so official checkpoints need no container renames.
``forward_features`` returns tokens ``[B, 1 + N, C]`` (``output_fmt = 'NLC'``) as timm's ViT does.

The ``attn_layer`` factory interface (shared with ``_swin_like`` and ``_pvt_like``)::

    attn_layer(stage=0, index=i, dim=C, num_heads=h, resolution=(H, W),
               attn_drop=p_attn, proj_drop=p_proj, device=device, dtype=dtype) -> nn.Module

called for blocks ``i < family_depth``; ``resolution`` is the patch grid at ``img_size``. The module's forward is
``forward(x, size=(H, W))``: tokens ``[B, 1 + H * W, C]`` (the class token first, then the patch tokens row-major) ->
the same shape, for any grid ``(H, W)`` (other input sizes give other grids). Factories should accept ``**kwargs``.

Any input size: the stem pads the image to a multiple of the patch size and ``pos_embed`` is resampled to the grid
(timm's ``resample_abs_pos_embed``, bicubic, as timm's ViT with ``dynamic_img_size=True``); at ``img_size`` nothing
is resampled. ``dynamic_img_size=False`` instead rejects other grids with a ValueError.
"""
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import (
    Attention,
    Mlp,
    calculate_drop_path_rates,
    get_device_dtype,
    register_notrace_function,
    resample_abs_pos_embed,
    to_2tuple,
    trunc_normal_,
)
from timm.models import checkpoint

from zoo.layers import PatchEmbedCl, PreNormBlockCl
from zoo.layers._checks import check_bool, check_number
from zoo.layers.partition import is_exporting

from ._helpers import (
    PretrainedFileMixin,
    check_features,
    check_images,
    check_model_args,
    checkpoint_pos_grid,
    feature_take_indices,
    init_weights,
)

__all__ = ['DeitLikeCfg', 'DeitLike', 'DeitLikeBlock', 'DeitLikeFamilyBlock', 'embed_tokens', 'grid_of',
           'resample_checkpoint_pos_embed']

AttnFactory = Callable[..., nn.Module]
_POOLS = ('token', 'avg', '')


@dataclass(frozen=True)
class DeitLikeCfg:
    """Architecture of a DeiT-layout variant.

    Attributes:
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        patch_size: patch stride.
        img_size: input size ``pos_embed`` and the family layers are built for.
        family_depth: the first ``family_depth`` blocks use the family attention, the rest softmax attention
            (official ``agent_layer``; -1: all blocks).
        qkv_bias: bias of the softmax blocks' ``qkv``.
        family_kwargs: hashable ``((key, value), ...)`` pairs a family passes to its factory.
    """
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.
    patch_size: int = 16
    img_size: Union[int, Tuple[int, int]] = 224
    family_depth: int = -1
    qkv_bias: bool = True
    family_kwargs: Tuple[Tuple[str, object], ...] = ()

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f'depth must be >= 1, got depth={self.depth}')
        if self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(f'num_heads must be >= 1 and divide embed_dim={self.embed_dim}, '
                             f'got num_heads={self.num_heads}')
        check_number('mlp_ratio', self.mlp_ratio, 0, low_open=True)
        if self.patch_size < 1:
            raise ValueError(f'patch_size must be >= 1, got patch_size={self.patch_size}')
        if not (self.family_depth == -1 or 0 <= self.family_depth <= self.depth):
            raise ValueError(f'family_depth must be -1 or in [0, depth={self.depth}], '
                             f'got family_depth={self.family_depth}')
        size = tuple(to_2tuple(self.img_size))
        if len(size) != 2 or any(int(s) < 1 for s in size):
            raise ValueError(f'img_size must be an int or (h, w) pair of ints >= 1, got img_size={self.img_size!r}')

    @property
    def grid_size(self) -> Tuple[int, int]:
        """Patch grid at ``img_size`` (ceil division: the stem pads)."""
        h, w = (int(s) for s in to_2tuple(self.img_size))
        return -(-h // self.patch_size), -(-w // self.patch_size)

    @property
    def num_family_blocks(self) -> int:
        return self.depth if self.family_depth == -1 else self.family_depth


class DeitLikeBlock(PreNormBlockCl):
    """:class:`~zoo.layers.PreNormBlockCl` over ``[B, 1 + N, C]`` tokens of an ``(H, W)`` grid; the attention is
    called as ``attn(x)`` (timm's softmax ``Attention``). :class:`DeitLikeFamilyBlock` passes the grid (one call per
    class, so that TorchScript compiles only the block's own call)."""

    takes_size = False

    def __init__(self, dim: int, attn: nn.Module, **kwargs):
        super().__init__(dim, attn_layer=attn, **kwargs)

    def _attn(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        return self.attn(x)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """``[B, 1 + H * W, C]`` tokens of an ``(H, W)`` grid -> the same shape."""
        x = x + self.drop_path1(self.ls1(self._attn(self.norm1(x), size)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class DeitLikeFamilyBlock(DeitLikeBlock):
    """A block whose attention takes the grid: ``attn(x, size=(H, W))``."""

    takes_size = True

    def _attn(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        return self.attn(x, size=size)


def resample_checkpoint_pos_embed(
        state_dict: Dict[str, torch.Tensor], model: 'DeitLike', interpolation: str) -> Dict[str, torch.Tensor]:
    """A copy of ``state_dict`` whose ``pos_embed`` (class token + a square grid) is resampled to ``model``'s grid
    where it was trained at another size (timm's ``resample_abs_pos_embed``, the family's ``interpolation``); a
    table of another shape is left for the strict key check to name."""
    out = dict(state_dict)
    old = checkpoint_pos_grid(out['pos_embed'], model.pos_embed, 1) if 'pos_embed' in out else None
    if old:
        out['pos_embed'] = resample_abs_pos_embed(
            out['pos_embed'], list(model.grid_size), [old, old], num_prefix_tokens=1, interpolation=interpolation,
            antialias=False)
    return out


@register_notrace_function  # shape-dependent (grid check, resampling): one opaque node under FX
def embed_tokens(
        x: torch.Tensor,
        cls_token: torch.Tensor,
        pos_embed: torch.Tensor,
        grid_size: Tuple[int, int],
        dynamic_img_size: bool,
) -> torch.Tensor:
    """``[B, H, W, C]`` patch map -> ``[B, 1 + H * W, C]``: the class token first, plus ``pos_embed`` (sized for
    ``grid_size``; resampled bicubically to ``(H, W)`` when it differs and ``dynamic_img_size``).

    Raises:
        ValueError: the grid differs from ``grid_size`` and not ``dynamic_img_size``.
    """
    B, H, W, C = x.shape
    pos = pos_embed
    if is_exporting() and dynamic_img_size:
        # torch.export (ONNX): resampled at every size (the identity at ``grid_size``; timm skips its early return
        # while exporting), so that no branch on the traced size is baked into the graph
        pos = resample_abs_pos_embed(pos, [H, W], [grid_size[0], grid_size[1]], num_prefix_tokens=1)
    elif H != grid_size[0] or W != grid_size[1]:
        if not dynamic_img_size:
            raise ValueError(f'input grid ({H}, {W}) differs from the model grid ({grid_size[0]}, {grid_size[1]}); '
                             f'build with dynamic_img_size=True or img_size= for this input')
        pos = resample_abs_pos_embed(pos, [H, W], [grid_size[0], grid_size[1]], num_prefix_tokens=1)
    x = torch.cat([cls_token.expand(B, -1, -1), x.reshape(B, H * W, C)], dim=1)
    return x + pos


@register_notrace_function  # a shape read: one opaque node under FX
def grid_of(x: torch.Tensor) -> Tuple[int, int]:
    """``(H, W)`` of a ``[B, H, W, C]`` map."""
    return x.shape[1], x.shape[2]


class DeitLike(PretrainedFileMixin, nn.Module):
    """DeiT-layout model with a family attention (see the module docstring); timm ViT's classifier and
    ``forward_intermediates`` interface (class-token pooling by default)."""

    output_fmt = 'NLC'
    num_prefix_tokens = 1

    def __init__(
            self,
            cfg: DeitLikeCfg,
            attn_layer: AttnFactory,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            dynamic_img_size: bool = True,
            norm_layer: Optional[Callable[..., nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            cfg: architecture.
            attn_layer: factory of the family attention (interface in the module docstring).
            in_chans: image channels.
            num_classes: classifier outputs (0: none).
            global_pool: 'token' (class token, DeiT), 'avg' (mean of the patch tokens) or '' (no pooling).
            drop_rate: dropout before the classifier.
            pos_drop_rate: dropout after adding ``pos_embed``.
            proj_drop_rate: dropout after projections and in MLPs.
            attn_drop_rate: attention dropout.
            drop_path_rate: stochastic depth, linear from 0 over the blocks.
            dynamic_img_size: resample ``pos_embed`` to the grid of each input (False: only ``img_size`` grids).
            norm_layer: token norm (default ``nn.LayerNorm`` eps 1e-6, as the official models).
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: an argument or config field outside its valid values, naming it.
            TypeError: ``attn_layer`` is not callable, or ``dynamic_img_size`` not a bool.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_model_args(in_chans, num_classes, drop_rate, drop_path_rate)
        check_bool('dynamic_img_size', dynamic_img_size)
        if global_pool not in _POOLS:
            raise ValueError(f'global_pool must be one of {_POOLS}, got global_pool={global_pool!r}')
        if not callable(attn_layer):
            raise TypeError(f'attn_layer must be a callable returning an nn.Module, got {attn_layer!r}')
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.cfg = cfg
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = dim = cfg.embed_dim
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        self.grid_size: Tuple[int, int] = cfg.grid_size
        self.patch_size = cfg.patch_size

        self.patch_embed = PatchEmbedCl(cfg.patch_size, in_chans, dim, norm_layer=None, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **dd))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, cfg.depth)
        blocks = []
        for i in range(cfg.depth):
            if i < cfg.num_family_blocks:
                attn = attn_layer(stage=0, index=i, dim=dim, num_heads=cfg.num_heads, resolution=self.grid_size,
                                  attn_drop=attn_drop_rate, proj_drop=proj_drop_rate, **dd)
                if not isinstance(attn, nn.Module):
                    raise TypeError(f'attn_layer must return an nn.Module, got {type(attn).__name__}')
            else:
                attn = Attention(dim, cfg.num_heads, qkv_bias=cfg.qkv_bias, attn_drop=attn_drop_rate,
                                 proj_drop=proj_drop_rate, **dd)
            block_cls = DeitLikeFamilyBlock if i < cfg.num_family_blocks else DeitLikeBlock
            blocks.append(block_cls(
                dim, attn, mlp_layer=Mlp, mlp_ratio=cfg.mlp_ratio,
                drop_path=dpr[i], proj_drop=proj_drop_rate, norm_layer=norm_layer, **dd))
        self.blocks = nn.ModuleList(blocks)  # a block takes (x, size): no Sequential
        self.feature_info = [dict(num_chs=dim, reduction=cfg.patch_size, module=f'blocks.{i}')
                             for i in range(cfg.depth)]
        self.norm = norm_layer(dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        self.apply(init_weights)

    # ----------------------------------------------------------------------------------------------- interface
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """``pos_embed`` and ``cls_token`` (official)."""
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Parameter groups for layer-wise learning-rate decay (timm ViT's)."""
        return dict(stem=r'^cls_token|pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Run the blocks under activation checkpointing."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier (``num_classes=0``: pooled features; ``global_pool=''``: all tokens).

        Raises:
            ValueError: ``num_classes < 0`` or ``global_pool`` not one of 'token', 'avg', ''.
            TypeError: ``num_classes`` not an int.
        """
        check_number('num_classes', num_classes, 0, integer=True)
        if global_pool is not None:
            if global_pool not in _POOLS:
                raise ValueError(f'global_pool must be one of {_POOLS}, got global_pool={global_pool!r}')
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes, **get_device_dtype(self)) if num_classes > 0 \
            else nn.Identity()
        self.head.train(self.training)

    # ------------------------------------------------------------------------------------------------- forward
    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Images -> ``[B, 1 + H * W, C]`` tokens with position embedding, and the grid ``(H, W)``."""
        check_images(x, self.in_chans, None if torch.jit.is_scripting() else self.cls_token)
        x = self.patch_embed(x)  # [B, H, W, C]
        size = grid_of(x)
        x = embed_tokens(x, self.cls_token, self.pos_embed, self.grid_size, self.dynamic_img_size)
        return self.pos_drop(x), size

    def _run(self, block: nn.Module, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(block, x, size)
        return block(x, size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` images -> normed tokens ``[B, 1 + N, C]``."""
        x, size = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for block in self.blocks:
                x = checkpoint(block, x, size)
        else:
            for block in self.blocks:
                x = block(x, size)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (class token / patch-token mean / none) and classify ``[B, 1 + N, num_features]`` tokens.

        Raises:
            ValueError: ``x`` not ``[B, L, num_features]`` tokens.
        """
        check_features(x, self.num_features, 'NLC')
        if self.global_pool == 'token':
            x = x[:, 0]
        elif self.global_pool == 'avg':
            x = x[:, 1:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm ViT's ``forward_intermediates``: block outputs as maps (the class token split off).

        Args:
            x: ``[B, in_chans, H, W]`` images.
            indices: blocks to return: last n if int, all if None, these if a sequence.
            return_prefix_tokens: return ``(map, class token)`` pairs.
            norm: apply the final norm to the intermediates.
            stop_early: stop after the last requested block.
            output_fmt: 'NCHW', 'NHWC' (maps) or 'NLC' (patch tokens).
            intermediates_only: return only the intermediates.

        Raises:
            ValueError: ``output_fmt`` not one of the above.
        """
        if output_fmt not in ('NCHW', 'NHWC', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got output_fmt={output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, (H, W) = self._embed(x)
        B = x.shape[0]
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run(block, x, (H, W))
            if i in take_indices:
                y = self.norm(x) if norm else x
                prefix, tokens = y[:, :1], y[:, 1:]
                if output_fmt != 'NLC':
                    tokens = tokens.reshape(B, H, W, -1)
                    if output_fmt == 'NCHW':
                        tokens = tokens.permute(0, 3, 1, 2).contiguous()
                intermediates.append((tokens, prefix) if return_prefix_tokens else tokens)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks (and norm / head) not needed for the ``indices`` intermediates."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices
