"""The pre-norm residual block every family builds on, with its attention and MLP passed in.

:class:`PreNormBlockCl` is timm's ``vision_transformer.Block`` (and the body of maxxvit's ``PartitionAttentionCl``)
with the token mixer and the MLP as arguments::

    x = x + drop_path1(ls1(attn(norm1(x))))
    x = x + drop_path2(ls2(mlp(norm2(x))))

on channels-last tokens (``[B, H, W, C]``, or any ``[..., C]`` the attention accepts); :class:`PreNormBlock2d` is the
same on NCHW maps (norms, MLP and layer scale over dim 1). Parameter names are timm's: ``norm1``, ``attn.*``,
``ls1.gamma``, ``norm2``, ``mlp.*``, ``ls2.gamma``. Official checkpoints that call the layer-scale vectors
``gamma1`` / ``gamma2`` (NAT, BiFormer, Flowformer's ``gamma``) or give them another shape (RAVLT's ``[1, C, 1, 1]``)
are converted by their family's checkpoint filter (a key rename, at most a reshape).

Either branch can be left out (``attn_layer=None`` or ``mlp_layer=None``): LITv2's early stages are MLP-only blocks
(``x + mlp(norm2(x))``) with the same names.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import ConvMlp, DropPath, LayerNorm2d, LayerScale, LayerScale2d, Mlp, register_notrace_function

from ._checks import check_drop, check_input_dtype, check_number, shape_str

__all__ = ['PreNormBlockCl', 'PreNormBlock2d']

LayerArg = Optional[Union[Callable[..., nn.Module], nn.Module]]
InitValues = Optional[Union[float, Sequence[Optional[float]]]]


# one opaque node under FX (its autowrap skips names that start with '_'; a parameter argument becomes a get_attr)
@register_notrace_function
def check_block_input(x: torch.Tensor, dim: int, channel_dim: int, like: Optional[torch.Tensor]) -> None:
    if x.dim() < 2 or x.shape[channel_dim] != dim:
        where = '[B, ..., dim]' if channel_dim == -1 else '[B, dim, H, W]'
        raise ValueError(f'x must have shape {where} with dim={dim}, got {shape_str(x)}')
    if like is not None:
        check_input_dtype(x, like)


def _split_init_values(init_values: InitValues) -> Tuple[Optional[float], Optional[float]]:
    if init_values is None or isinstance(init_values, (int, float)):
        return init_values, init_values
    values = tuple(init_values)
    if len(values) != 2:
        raise ValueError(f'init_values must be None, a float or an (attn, mlp) pair, got init_values={init_values!r}')
    return values[0], values[1]


def _build(layer: LayerArg, name: str, kwargs: Dict[str, Any], call: Callable[[Callable], nn.Module]) -> nn.Module:
    """``layer`` itself when it is a module (then ``kwargs`` must be empty), else ``call(layer)``."""
    if isinstance(layer, nn.Module):
        if kwargs:
            raise ValueError(f'{name}_kwargs must be empty when {name}_layer is a module, got {sorted(kwargs)}')
        return layer
    if not callable(layer):
        raise TypeError(f'{name}_layer must be an nn.Module, a class or a callable returning one, got {layer!r}')
    return call(layer)


class PreNormBlockCl(nn.Module):
    """Pre-norm transformer block ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` over channels-last tokens."""

    ls_layer = LayerScale

    def __init__(
            self,
            dim: int,
            attn_layer: LayerArg,
            mlp_layer: LayerArg = Mlp,
            attn_kwargs: Optional[Dict[str, Any]] = None,
            mlp_kwargs: Optional[Dict[str, Any]] = None,
            mlp_ratio: float = 4.,
            init_values: InitValues = None,
            drop_path: float = 0.,
            proj_drop: float = 0.,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: channels of the tokens.
            attn_layer: the token mixer: a module (used as is), or a class / callable built as
                ``attn_layer(dim, **attn_kwargs, device=, dtype=)``; it maps the normed tokens to tokens of the same
                shape. None leaves the attention branch (and ``norm1``, ``ls1``) out.
            mlp_layer: the channel MLP: a module, or a class / callable built with timm's ``Mlp`` signature,
                ``mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer,
                drop=proj_drop, **mlp_kwargs, device=, dtype=)``. None leaves the MLP branch out.
            attn_kwargs: keyword arguments of ``attn_layer`` (``num_heads``, ``kernel_size``, ...).
            mlp_kwargs: further keyword arguments of ``mlp_layer``.
            mlp_ratio: hidden width of the MLP over ``dim``.
            init_values: layer-scale init value of both branches, or an ``(attn, mlp)`` pair (None / 0: no layer
                scale on that branch, as timm).
            drop_path: stochastic-depth rate of both residual branches.
            proj_drop: dropout inside the MLP.
            act_layer: MLP activation.
            norm_layer: norm over the channels, built as ``norm_layer(dim, device=, dtype=)``.
            device: device of the parameters.
            dtype: dtype of the parameters.

        Raises:
            ValueError: ``dim``, ``mlp_ratio``, ``drop_path``, ``init_values`` or ``*_kwargs`` outside their valid
                values, naming the argument.
            TypeError: ``attn_layer`` / ``mlp_layer`` / ``norm_layer`` is neither a module nor callable.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_number('dim', dim, 1, integer=True)
        check_number('mlp_ratio', mlp_ratio, 0, low_open=True)
        check_drop('drop_path', drop_path)
        check_drop('proj_drop', proj_drop)
        if not callable(norm_layer):
            raise TypeError(f'norm_layer must be a class or callable returning a module, got {norm_layer!r}')
        ls_attn, ls_mlp = _split_init_values(init_values)
        attn_kwargs = dict(attn_kwargs or {})
        mlp_kwargs = dict(mlp_kwargs or {})
        self.dim = dim

        if attn_layer is not None:
            self.norm1 = norm_layer(dim, **dd)
            self.attn = _build(attn_layer, 'attn', attn_kwargs, lambda layer: layer(dim, **attn_kwargs, **dd))
            self.ls1 = self.ls_layer(dim, init_values=ls_attn, **dd) if ls_attn else nn.Identity()
            self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        else:
            if attn_kwargs:
                raise ValueError(f'attn_kwargs must be empty without an attn_layer, got {sorted(attn_kwargs)}')
            self.attn = None
        if mlp_layer is not None:
            self.norm2 = norm_layer(dim, **dd)
            self.mlp = _build(mlp_layer, 'mlp', mlp_kwargs, lambda layer: layer(
                in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop,
                **mlp_kwargs, **dd))
            self.ls2 = self.ls_layer(dim, init_values=ls_mlp, **dd) if ls_mlp else nn.Identity()
            self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        else:
            if mlp_kwargs:
                raise ValueError(f'mlp_kwargs must be empty without an mlp_layer, got {sorted(mlp_kwargs)}')
            self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, ..., dim]`` tokens (as the attention takes them) -> the same shape."""
        self._check_input(x, -1)
        return self.forward_branches(x)

    def _check_input(self, x: torch.Tensor, channel_dim: int) -> None:
        """``x`` has ``dim`` channels at ``channel_dim`` and the parameters' dtype (before the first norm sees it)."""
        like: Optional[torch.Tensor] = None
        if not torch.jit.is_scripting():  # TorchScript cannot iterate the parameters: the shape alone there
            like = next(self.parameters())
        check_block_input(x, self.dim, channel_dim, like)

    def forward_branches(self, x: torch.Tensor) -> torch.Tensor:
        """The two residual branches; subclasses that wrap :meth:`forward` call this (TorchScript has no
        ``super().forward``)."""
        if self.attn is not None:
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        if self.mlp is not None:
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class PreNormBlock2d(PreNormBlockCl):
    """:class:`PreNormBlockCl` on NCHW maps: timm's ``LayerNorm2d``, ``ConvMlp`` (1x1 convs) and ``LayerScale2d``
    by default.

    ``attn_layer`` maps ``[B, dim, H, W]`` to the same shape; the ``ls1.gamma`` / ``ls2.gamma`` vectors are ``[dim]``
    and scale dim 1.
    """

    ls_layer = LayerScale2d

    def __init__(
            self,
            dim: int,
            attn_layer: LayerArg,
            mlp_layer: LayerArg = ConvMlp,
            attn_kwargs: Optional[Dict[str, Any]] = None,
            mlp_kwargs: Optional[Dict[str, Any]] = None,
            mlp_ratio: float = 4.,
            init_values: InitValues = None,
            drop_path: float = 0.,
            proj_drop: float = 0.,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = LayerNorm2d,
            device=None,
            dtype=None,
    ):
        """Arguments as :class:`PreNormBlockCl`; ``mlp_layer`` and ``norm_layer`` must work on NCHW maps."""
        super().__init__(
            dim, attn_layer, mlp_layer=mlp_layer, attn_kwargs=attn_kwargs, mlp_kwargs=mlp_kwargs,
            mlp_ratio=mlp_ratio, init_values=init_values, drop_path=drop_path, proj_drop=proj_drop,
            act_layer=act_layer, norm_layer=norm_layer, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim, H, W]`` -> ``[B, dim, H, W]``."""
        self._check_input(x, 1)
        return self.forward_branches(x)
