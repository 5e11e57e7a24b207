"""Helpers shared by the model families: config overlays, argument checks, the timm classifier / feature interface
of staged models, intermediate-feature indices and checkpoint filters."""

import dataclasses
import math
import numbers
import re
import sys
import typing
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, get_device_dtype, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, resolve_pretrained_cfg
from timm.models._features import feature_take_indices as _timm_feature_take_indices
from timm.models._manipulate import adapt_input_conv

from zoo.layers._checks import check_drop, check_input_dtype, check_nchw, check_number, shape_str

from ._safe_load import read_weights

__all__ = [
    'feature_take_indices', 'overlay_cfg', 'overlay_cfg_strict', 'check_cfg_value',
    'init_weights', 'check_model_args', 'check_output_fmt', 'check_global_pool', 'check_classifier_args',
    'check_images', 'check_features', 'build_model', 'PretrainedFileMixin', 'ClassifierMixin',
    'StagedModelMixin', 'IsotropicModelMixin', 'unwrap_state_dict', 'rename_keys', 'check_state_dict',
    'loader_adapted_keys', 'checkpoint_pos_grid',
]

CfgT = TypeVar('CfgT')
Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]


def overlay_cfg(cfg: CfgT, kwargs: Dict[str, Any]) -> CfgT:
    """Return ``cfg`` with the fields named in ``kwargs`` replaced; those entries are popped from ``kwargs``.

    Args:
        cfg: a (frozen) dataclass instance.
        kwargs: constructor keyword arguments; the ones naming a field of ``cfg`` are consumed.

    Raises:
        TypeError: a value that does not match its field's annotation (:func:`check_cfg_value`).
        ValueError: a non-finite float.
    """
    names = {f.name for f in dataclasses.fields(cfg)}
    overlay = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    if not overlay:
        return cfg
    hints = typing.get_type_hints(type(cfg))
    for name, value in overlay.items():
        check_cfg_value(name, value, hints[name])
    return dataclasses.replace(cfg, **overlay)


def check_cfg_value(name: str, value: Any, hint: Any) -> None:
    """Check a config value against its field's annotation before the config's own range checks see it.

    ``int`` takes an integer (not a bool), ``float`` an integer or a real number, ``bool`` a bool, ``str`` a string,
    ``Optional`` / ``Union`` any of their members, ``Tuple[X, ...]`` / ``Tuple[X, Y]`` a tuple or list of those;
    other annotations are not checked. Every float in the value must be finite (an infinite ``mlp_ratio`` or layer
    scale would fail deep in a layer or give NaN outputs).

    Raises:
        TypeError: ``value`` does not match ``hint``, naming the field and the expected type.
        ValueError: a non-finite float.
    """
    if not _matches_hint(value, hint):
        raise TypeError(f'{name} must be {_describe_hint(hint)}, got {name}={value!r}')
    if any(not math.isfinite(v) for v in _floats_in(value)):
        raise ValueError(f'{name} must be finite, got {name}={value!r}')


def _matches_hint(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return any(_matches_hint(value, h) for h in args)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches_hint(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches_hint(v, h) for v, h in zip(value, args))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _is_int(value)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _describe_hint(hint: Any, plural: bool = False) -> str:
    """``'an int or (an int, an int)'``, ``'a tuple of numbers'``, ``'a tuple of (a string, any value)'``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return ' or '.join(_describe_hint(h, plural) for h in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f'{"tuples" if plural else "a tuple"} of {_describe_hint(args[0], plural=True)}'
        return f'({", ".join(_describe_hint(h) for h in args)})'
    if hint is type(None):
        return 'None'
    names = {bool: ('a bool', 'bools'), int: ('an int', 'ints'), float: ('a number', 'numbers'),
             str: ('a string', 'strings')}
    return names[hint][plural] if hint in names else 'any value'


def _floats_in(value: Any) -> List[float]:
    if isinstance(value, (tuple, list)):
        return [f for v in value for f in _floats_in(v)]
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return [float(value)]
    return []


def overlay_cfg_strict(cfg: CfgT, kwargs: Dict[str, Any]) -> CfgT:
    """:func:`overlay_cfg`, then a ``TypeError`` naming any keyword that is not a field of ``cfg``.

    Raises:
        TypeError: ``kwargs`` holds names that are neither consumed here nor by the caller before.
    """
    cfg = overlay_cfg(cfg, kwargs)
    if kwargs:
        name = type(cfg).__name__
        raise TypeError(f'unexpected keyword arguments {sorted(kwargs)}; {name} fields are '
                        f'{sorted(f.name for f in dataclasses.fields(cfg))}')
    return cfg


def init_weights(module: nn.Module) -> None:
    """timm's ViT-style init, for ``model.apply``: truncated-normal (std 0.02) Linear weights, zero biases, unit
    LayerNorm."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def check_model_args(in_chans: int, num_classes: int, drop_rate: float, drop_path_rate: float) -> None:
    """Validate the constructor arguments every classification model takes.

    Raises:
        TypeError: an argument of another type (a float channel count), naming it.
        ValueError: an argument outside its valid values, naming it.
    """
    check_number('in_chans', in_chans, 1, integer=True)
    check_number('num_classes', num_classes, 0, integer=True)
    check_drop('drop_rate', drop_rate)
    check_drop('drop_path_rate', drop_path_rate)


def check_output_fmt(output_fmt: str) -> None:
    """Raise ``ValueError`` unless ``output_fmt`` is 'NCHW' or 'NHWC'."""
    if output_fmt not in ('NCHW', 'NHWC'):
        raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got output_fmt={output_fmt!r}")


# the pool types of timm's SelectAdaptivePool2d ('' = no pooling); each also with a 'fast' prefix, and 'fast' = 'avg'
_POOL_TYPES = ('', 'avg', 'max', 'avgmax', 'catavgmax')


def check_global_pool(global_pool: str) -> None:
    """Raise ``ValueError`` unless timm's classifier heads take ``global_pool`` (they would fail an ``assert``)."""
    base = global_pool[len('fast'):] if isinstance(global_pool, str) and global_pool.startswith('fast') else global_pool
    if base not in _POOL_TYPES:
        raise ValueError(f'global_pool must be one of {_POOL_TYPES} (or one of them prefixed by \'fast\'), got '
                         f'global_pool={global_pool!r}')


def feature_take_indices(num_features: int, indices: Optional[Union[int, List[int]]] = None) -> Tuple[List[int], int]:
    """timm's ``feature_take_indices`` (``indices``: the last n if an int, all if None, else these, negative from the
    end) -> the absolute indices and the largest, with a ``ValueError`` naming ``indices`` instead of its ``assert``.

    Raises:
        TypeError: not an int, a sequence of ints or None (a string, a float).
        ValueError: an int outside ``[1, num_features]``, an empty sequence, or an index outside
            ``[-num_features, num_features)``.
    """
    if not (indices is None or _is_int(indices)
            or (isinstance(indices, (list, tuple)) and all(_is_int(i) for i in indices))):
        raise TypeError(f'indices must be an int (the last n features), a sequence of ints or None, got '
                        f'indices={indices!r}')
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f'indices as an int takes the last n of the {num_features} features: it must be in '
                             f'[1, {num_features}], got indices={indices}')
    elif indices is not None:
        if len(indices) == 0 or any(not -num_features <= i < num_features for i in indices):
            raise ValueError(f'indices must be a non-empty sequence of feature indices in [{-num_features}, '
                             f'{num_features}) (there are {num_features} features), got indices={indices}')
    return _timm_feature_take_indices(num_features, indices)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_classifier_args(num_classes: int, global_pool: Optional[str] = None) -> None:
    """The arguments of ``reset_classifier``: raise ``ValueError`` for ``num_classes < 0`` or an unknown
    ``global_pool`` (None: keep the current one)."""
    check_number('num_classes', num_classes, 0, integer=True)
    if global_pool is not None:
        check_global_pool(global_pool)


@register_notrace_function  # branches on the input: one opaque node under FX
def check_images(x: torch.Tensor, in_chans: int, like: Optional[torch.Tensor] = None) -> None:
    """Raise unless ``x`` is a batch of images a model can take: ``[B, in_chans, H, W]`` with ``B, H, W >= 1``,
    floating point, and, given one of the model's parameters as ``like``, on its device and of its dtype (under
    autocast for that device: float32, float16 or bfloat16, which autocast casts). A ``like`` on the meta device
    (weights not materialized here) is not compared; under TorchScript only shape and floating point are checked.

    Raises:
        TypeError: ``x`` not a tensor, not floating point, or of another dtype than the parameters.
        ValueError: ``x`` of another shape, empty, or on another device than the parameters.
    """
    if not torch.jit.is_scripting() and not isinstance(x, torch.Tensor):
        raise TypeError(f'x must be a torch.Tensor of images [B, {in_chans}, H, W], got {type(x).__name__}')
    check_nchw(x, in_chans)
    if x.numel() == 0:
        raise ValueError(f'x must hold at least one image of at least 1 x 1 pixels, got shape {shape_str(x)}')
    if not x.is_floating_point():
        raise TypeError(f'x must be floating-point images (for example x.float() / 255, normalized), got dtype '
                        f'{x.dtype}')
    if like is None or torch.jit.is_scripting() or like.device.type == 'meta':
        return
    if x.device != like.device:
        raise ValueError(f"x must be on the device of the model's parameters ({like.device}), got x on {x.device}")
    check_input_dtype(x, like)


@register_notrace_function  # a shape test: one opaque node under FX
def check_features(x: torch.Tensor, num_features: int, fmt: str) -> None:
    """Raise ``ValueError`` unless ``x`` is what ``forward_features`` returns: a map ``[B, num_features, H, W]``
    (``fmt`` 'NCHW') or ``[B, H, W, num_features]`` ('NHWC'), or tokens ``[B, L, num_features]`` ('NLC')."""
    layouts = {'NCHW': (4, 1, f'[B, {num_features}, H, W]'), 'NHWC': (4, 3, f'[B, H, W, {num_features}]'),
               'NLC': (3, 2, f'[B, L, {num_features}]')}
    rank, dim, layout = layouts[fmt]
    if x.dim() != rank or x.shape[dim] != num_features:
        raise ValueError(f'x must be the features {layout} that forward_features returns, got {shape_str(x)}')


def build_model(model_cls: Callable[..., nn.Module], variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg``, where a weight file or URL named by ``pretrained_cfg_overlay`` is loaded by the
    family's loader (:class:`PretrainedFileMixin`) as the cfgs' own weights are: timm resets ``custom_load`` for an
    overlay that names a source, so it is set here unless the overlay sets it.

    Raises:
        ValueError: ``pretrained=True`` for a variant without released weights and no file, URL or state dict given.
    """
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        if cfg.state_dict is None and not (cfg.file or cfg.url or cfg.hf_hub_id):
            raise ValueError(f'pretrained=True: {variant} has no released weights; load a checkpoint with '
                             f'pretrained_cfg_overlay=dict(file=path), or build it with pretrained=False')
    overlay = kwargs.get('pretrained_cfg_overlay')
    if overlay and (overlay.get('file') or overlay.get('url')) and 'custom_load' not in overlay:
        kwargs['pretrained_cfg_overlay'] = {**overlay, 'custom_load': True}
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)


def _cfg_names(value: Any) -> List[str]:
    """A pretrained cfg's ``first_conv`` / ``classifier`` entry (a name, a sequence of names or None) as a list."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


class PretrainedFileMixin:
    """timm's ``custom_load`` hook, shared by every family (their cfgs set ``custom_load=True``, so that
    ``create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=path))`` and URL weights come here).

    The file is read without running code from it (:func:`zoo.weights.safe_load.read_weights`: safetensors, or
    ``torch.load(weights_only=True)`` with an allow-list of the training extras official files carry), its ``model``
    weights are taken (the official loaders' choice, not an EMA), converted by the ``checkpoint_filter_fn`` of the
    model's family module (the first class in the MRO whose module defines one), adapted as timm's generic loader
    does (the cfg's ``first_conv`` to ``in_chans``; the ``classifier`` left at its initialisation when
    ``num_classes`` differs from the cfg's) and loaded strictly.
    """

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, prefix: str = '') -> None:
        """Load an official or native checkpoint file (``prefix``: unused, timm's hook signature).

        Raises:
            ValueError: the file is missing, corrupt or unsafe (:class:`~zoo.weights.safe_load.CheckpointReadError`),
                holds no model weights, or its weights do not fit this model (every missing, unexpected or wrongly
                shaped key named, with the file).
        """
        state_dict = read_weights(checkpoint_path)
        try:
            state_dict = dict(self._checkpoint_filter()(state_dict, self))
            cfg = getattr(self, 'pretrained_cfg', None) or {}
            for name in _cfg_names(cfg.get('first_conv')):
                weight = state_dict.get(name + '.weight')
                if isinstance(weight, torch.Tensor) and weight.dim() == 4 and weight.shape[1] != self.in_chans:
                    state_dict[name + '.weight'] = adapt_input_conv(self.in_chans, weight)
            exempt = []
            if self.num_classes != cfg.get('num_classes', 1000):
                for name in _cfg_names(cfg.get('classifier')):
                    exempt.append('^' + re.escape(name) + r'\.')
                    state_dict = {k: v for k, v in state_dict.items() if not re.match(exempt[-1], k)}
            check_state_dict(state_dict, self, exempt=exempt)
        except ValueError as e:
            raise ValueError(f'{checkpoint_path!r}: {e}') from None
        self.load_state_dict(state_dict, strict=not exempt)

    @classmethod
    def _checkpoint_filter(cls) -> Callable[[Dict[str, torch.Tensor], nn.Module], Dict[str, torch.Tensor]]:
        """The ``checkpoint_filter_fn`` of the family module: the first class in the MRO whose module has one."""
        for klass in cls.__mro__:
            fn = getattr(sys.modules.get(klass.__module__), 'checkpoint_filter_fn', None)
            if callable(fn):
                return fn
        raise TypeError(f'{cls.__name__} has no family module with a checkpoint_filter_fn')


class ClassifierMixin(PretrainedFileMixin):
    """timm's classifier interface for a model whose ``forward_features`` feeds a ``ClassifierHead`` ``self.head``.

    The features are laid out as ``stage_fmt`` ('NCHW' or 'NHWC'); the host sets ``num_features`` before
    :meth:`_init_head`.
    """

    stage_fmt: str = 'NCHW'

    def _init_args(self, in_chans: int, num_classes: int, drop_rate: float, drop_path_rate: float) -> None:
        """Validate the arguments every classification model takes (:func:`check_model_args`) and record
        ``in_chans`` (timm's ``model.in_chans``)."""
        check_model_args(in_chans, num_classes, drop_rate, drop_path_rate)
        self.in_chans = in_chans

    def _init_head(self, num_classes: int, global_pool: str, drop_rate: float, dd: Dict) -> None:
        check_global_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.head_hidden_size = self.num_features
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.stage_fmt,
            **dd)

    def _check_images(self, x: torch.Tensor) -> None:
        """Raise unless ``x`` is a batch of images for this model (:func:`check_images`)."""
        if torch.jit.is_scripting():
            check_images(x, self.in_chans)
        else:
            check_images(x, self.in_chans, next(self.parameters(), None))

    def _to_output_fmt(self, x: torch.Tensor, output_fmt: str) -> torch.Tensor:
        """``x`` (laid out as ``stage_fmt``) in ``output_fmt``."""
        if output_fmt == self.stage_fmt:
            return x
        return x.permute(0, 2, 3, 1) if output_fmt == 'NHWC' else x.permute(0, 3, 1, 2).contiguous()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final Linear (or ``nn.Identity`` without a classifier)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (``num_classes=0``: pooled features; ``global_pool=''``: no pooling).

        Args:
            num_classes: new number of outputs.
            global_pool: new pooling type; None keeps the current one.

        Raises:
            ValueError: ``num_classes < 0`` or an unknown ``global_pool``.
        """
        check_classifier_args(num_classes, global_pool)
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        # the new Linear on the model's device and dtype, sized for its features (which pruning may have narrowed)
        self.head.reset(num_classes, pool_type=global_pool, in_features=self.num_features, **get_device_dtype(self))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the features and classify.

        Args:
            x: features from ``forward_features``, laid out as ``stage_fmt``.
            pre_logits: return the pooled features instead of the logits.

        Returns:
            ``[B, num_classes]`` logits, or ``[B, num_features]`` pooled features.

        Raises:
            ValueError: ``x`` not a ``num_features`` map laid out as ``stage_fmt``.
        """
        if not torch.jit.is_scripting():  # TorchScript sees no class attributes (stage_fmt)
            check_features(x, self.num_features, self.stage_fmt)
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` images -> ``[B, num_classes]`` logits."""
        x = self.forward_features(x)
        return self.forward_head(x)


class _FeatureSequenceMixin(ClassifierMixin):
    """timm's feature interface for a "stem -> sequence of feature modules -> norm -> head" model.

    The host defines the stem module named by ``stem_name``, the ``nn.Sequential`` named by ``feature_seq_name``,
    ``norm``, ``head`` (see :class:`ClassifierMixin`), ``feature_info`` (one entry per feature module) and
    ``grad_checkpointing``. The subclasses set how the final norm treats intermediates and who checkpoints.
    """

    stem_name: str = 'stem'
    feature_seq_name: str = 'stages'
    # True: ``norm`` belongs to every intermediate (isotropic: one width); False: only to the last module's output
    norm_all_intermediates: bool = False
    # True: the model checkpoints each feature module; False: the modules do it (a ``grad_checkpointing`` flag each)
    checkpoint_modules: bool = False
    # True: the stem's output is feature 0 and module i is feature i + 1 (timm's MaxViT, ConvNeXt-like stems);
    # ``feature_info`` then starts with the stem's entry. Pruning never removes the stem.
    stem_feature: bool = False

    def _feature_seq(self) -> nn.Sequential:
        return getattr(self, self.feature_seq_name)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Run the blocks under activation checkpointing (``enable=False`` turns it off)."""
        self.grad_checkpointing = enable
        if not self.checkpoint_modules:
            for module in self._feature_seq():
                module.grad_checkpointing = enable

    def _checkpointing(self) -> bool:
        return self.checkpoint_modules and self.grad_checkpointing and not torch.jit.is_scripting()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns the outputs of the feature modules (stages, or blocks of isotropic models), after
        the stem's output as feature 0 when ``stem_feature`` is set.

        Args:
            x: ``[B, in_chans, H, W]`` images.
            indices: features to return: last n if int, all if None, these if a sequence (negative from the end).
            norm: apply the final norm to the returned intermediates (isotropic: all; staged: the last stage's).
            stop_early: stop after the last requested module.
            output_fmt: 'NCHW' or 'NHWC' for the intermediates.
            intermediates_only: return only the intermediates.

        Returns:
            The intermediates, or ``(final features laid out as stage_fmt, intermediates)``.

        Raises:
            ValueError: ``output_fmt`` is neither 'NCHW' nor 'NHWC', or ``indices`` out of range.
            TypeError, ValueError: ``x`` not images this model takes (:func:`check_images`).
        """
        self._check_images(x)
        check_output_fmt(output_fmt)
        seq = self._feature_seq()
        offset = int(self.stem_feature)
        intermediates = []
        take_indices, max_index = feature_take_indices(len(seq) + offset, indices)
        last = len(seq) + offset - 1
        x = getattr(self, self.stem_name)(x)
        if offset and 0 in take_indices:
            intermediates.append(self._to_output_fmt(x, output_fmt))
        modules = seq if torch.jit.is_scripting() or not stop_early else seq[:max_index + 1 - offset]
        i = offset - 1  # the feature index of x
        for j, module in enumerate(modules):
            i = j + offset
            x = checkpoint(module, x) if self._checkpointing() else module(x)
            if i in take_indices:
                x_inter = self.norm(x) if norm and (i == last or self.norm_all_intermediates) else x
                intermediates.append(self._to_output_fmt(x_inter, output_fmt))
        if intermediates_only:
            return intermediates
        if i == last or self.norm_all_intermediates:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the feature modules (and norm / head) not needed for the ``indices`` intermediates.

        Args:
            indices: the intermediates to keep, as for :meth:`forward_intermediates`.
            prune_norm: replace the final norm by ``nn.Identity`` even when the last module is kept.
            prune_head: remove the classifier even when the last module is kept.

        Returns:
            The feature indices taken.
        """
        seq = self._feature_seq()
        offset = int(self.stem_feature)
        take_indices, max_index = feature_take_indices(len(seq) + offset, indices)
        # a staged model cut before its last stage loses the norm and head of that stage's width
        prune_end = max_index < len(seq) + offset - 1 and not self.norm_all_intermediates
        setattr(self, self.feature_seq_name, seq[:max_index + 1 - offset])
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` images -> normed last features, laid out as ``stage_fmt``.

        Raises:
            TypeError, ValueError: ``x`` not images this model takes (:func:`check_images`).
        """
        self._check_images(x)
        if torch.jit.is_scripting():
            x = self._forward_scripted(x)
        elif self._checkpointing():
            x = checkpoint_seq(self._feature_seq(), getattr(self, self.stem_name)(x))
        else:
            x = self._feature_seq()(getattr(self, self.stem_name)(x))
        return self.norm(x)

    def _forward_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and feature modules under TorchScript, which finds submodules by literal names only (``hasattr``
        branches are resolved when compiling): the stem is ``patch_embed`` or ``stem``, the modules ``stages`` or
        ``blocks``. Activation checkpointing does not apply to scripted models."""
        if hasattr(self, 'patch_embed'):
            x = self.patch_embed(x)
        else:
            x = self.stem(x)
        if hasattr(self, 'stages'):
            x = self.stages(x)
        else:
            x = self.blocks(x)
        return x


class StagedModelMixin(_FeatureSequenceMixin):
    """timm's feature interface for a "stem -> stages -> norm -> head" model.

    The host defines the stem module named by ``stem_name``, ``stages`` (an ``nn.Sequential`` of modules with a
    ``grad_checkpointing`` flag, each ``stages.i`` made of ``downsample`` and ``blocks``), ``norm``, ``head`` (see
    :class:`ClassifierMixin`) and ``feature_info`` (one entry per stage). ``norm`` only follows the last stage.
    """

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Parameter groups for layer-wise learning-rate decay.

        Args:
            coarse: one group per stage instead of one per block.

        Returns:
            timm's ``dict(stem=..., blocks=...)`` matcher.
        """
        return dict(
            stem=rf'^{self.stem_name}',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )


class IsotropicModelMixin(_FeatureSequenceMixin):
    """timm's feature interface for a "patch stem -> blocks at one resolution -> norm -> head" model (ViT-like).

    The host defines the stem module named by ``stem_name``, ``blocks`` (an ``nn.Sequential``), ``norm``, ``head``
    and ``feature_info`` (one entry per block). As in timm's ViT, ``norm`` applies to every intermediate it is asked
    for, the model checkpoints block by block, and pruning keeps the norm.
    """

    feature_seq_name = 'blocks'
    norm_all_intermediates = True
    checkpoint_modules = True

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Parameter groups for layer-wise learning-rate decay: the stem, one group per block, the final norm."""
        return dict(stem=rf'^{self.stem_name}', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint saved plain, as ``{'model': ...}`` or as ``{'state_dict': ...}``.

    A ``module.`` prefix (DataParallel / DDP) is removed.

    Raises:
        ValueError: ``checkpoint`` is not a mapping of tensors after unwrapping.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'checkpoint must be a mapping of parameter names to tensors, got {type(checkpoint).__name__}')
    for wrapper in ('state_dict', 'model'):
        if wrapper in checkpoint and isinstance(checkpoint[wrapper], Mapping):
            checkpoint = checkpoint[wrapper]
            break
    bad = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f'checkpoint holds non-tensor entries {sorted(bad)[:8]}; expected a state dict')
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in checkpoint.items()}


def rename_keys(state_dict: Mapping[str, torch.Tensor], rules: Sequence[Rule]) -> Dict[str, torch.Tensor]:
    """Apply ``re.sub(pattern, repl, key)`` for every rule, in order, to every key.

    Raises:
        ValueError: two source keys map to the same target key.
    """
    out: Dict[str, torch.Tensor] = {}
    source: Dict[str, str] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if new in out:
            raise ValueError(f'checkpoint keys {source[new]!r} and {key!r} both map to {new!r}')
        out[new] = value
        source[new] = key
    return out


def checkpoint_pos_grid(pos: torch.Tensor, target: torch.Tensor, num_prefix_tokens: int = 0) -> Optional[int]:
    """The side of the square token grid of a checkpoint's absolute position embedding ``pos``
    ``[1, num_prefix_tokens + side ** 2, C]`` when it is to be resampled to the model's ``target`` (the same layout
    and width, another grid); None otherwise (the same shape, or one that does not fit: the strict key check then
    names it)."""
    if pos.dim() != 3 or target.dim() != 3 or pos.shape[0] != 1 or pos.shape[2] != target.shape[2]:
        return None
    n = pos.shape[1] - num_prefix_tokens
    side = math.isqrt(max(n, 0))
    return side if n > 0 and side * side == n and pos.shape != target.shape else None


def loader_adapted_keys(model: nn.Module, classifier: str = 'head.fc') -> List[str]:
    """Regexes (for :func:`check_state_dict`'s ``exempt``) of the keys timm's loader adapts itself: the classifier
    ``classifier`` (re-initialised when ``num_classes`` differs) and the weight of the cfg's ``first_conv``
    (adapted when ``in_chans`` differs)."""
    exempt = ['^' + re.escape(classifier) + r'\.']
    first_conv = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv')
    if first_conv:
        exempt.append('^' + re.escape(first_conv) + r'\.weight$')
    return exempt


def check_state_dict(
        state_dict: Mapping[str, torch.Tensor],
        model: nn.Module,
        exempt: Iterable[str] = (),
) -> None:
    """Raise unless ``state_dict`` has exactly the keys and shapes of ``model.state_dict()``.

    Args:
        state_dict: converted checkpoint.
        model: target model.
        exempt: regexes of keys whose presence and shape are left to the loader (timm re-initialises or adapts
            the classifier and the first conv when ``num_classes`` / ``in_chans`` differ from the checkpoint).

    Raises:
        ValueError: naming the missing keys, the unexpected keys and the shape mismatches.
    """
    exempt = [re.compile(p) for p in exempt]

    def is_exempt(key: str) -> bool:
        return any(p.search(key) for p in exempt)

    target = model.state_dict()
    missing = sorted(k for k in target if k not in state_dict and not is_exempt(k))
    unexpected = sorted(k for k in state_dict if k not in target and not is_exempt(k))
    mismatched: List[str] = sorted(
        f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}'
        for k, v in state_dict.items()
        if k in target and not is_exempt(k) and tuple(v.shape) != tuple(target[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f'missing keys {_abbrev(missing)}')
        if unexpected:
            parts.append(f'unexpected keys {_abbrev(unexpected)}')
        if mismatched:
            parts.append(f'shape mismatches {_abbrev(mismatched)}')
        raise ValueError(f'checkpoint does not match {type(model).__name__}: ' + '; '.join(parts))


def _abbrev(items: List[str], limit: int = 12) -> str:
    shown = ', '.join(items[:limit])
    return f'[{shown}' + (f', ... ({len(items) - limit} more)]' if len(items) > limit else ']')
