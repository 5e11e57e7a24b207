"""fvcore GMACs of zoo models with neighborhood attention counted, the convention of the official NAT numbers.

fvcore traces the model with ``torch.jit.trace`` and counts one multiply-add as one "flop" for convolutions, linear
layers, matmuls and einsums, plus ``5 * numel`` per affine LayerNorm; elementwise ops, softmax and pooling are free.
A fused neighborhood-attention call would either be invisible to it or be counted through whatever ops a backend
happens to use, so while counting, :class:`~zoo.layers.NeighborhoodAttention2d` calls a shape-only placeholder op
``zoo_flops::na2d`` instead, counted as the two matmuls of neighborhood attention::

    B * H * W * heads * prod(kernel_size) * (head_dim + head_dim_v)

over the (padded) map it attends on. The relative-position-bias add is not counted; NATTEN's own fvcore handle
adds ``B * H * W * heads * prod(kernel_size)`` for it (about 0.1 % of NAT's total). Global attention
(:class:`~zoo.layers.RpbAttention2d`) runs its explicit matmul path while counting, so fvcore sees it.

This is the one GMACs counter of the project: the README's model table, the GMACs tests and the model card of
``python -m zoo.weights export`` use it. fvcore comes with the ``train`` and ``test`` extras (``pip install fvcore``).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Sequence, Tuple

import torch
import torch.nn as nn

from zoo.layers import neighborhood as _na_layer

__all__ = ['count_gmacs', 'na_counting']


@torch.library.custom_op('zoo_flops::na2d', mutates_args=())
def _na2d_placeholder(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_h: int,
                      kernel_w: int) -> torch.Tensor:
    return torch.zeros(query.shape[:-1] + value.shape[-1:], dtype=value.dtype, device=value.device)


@_na2d_placeholder.register_fake
def _(query, key, value, kernel_h, kernel_w):
    return query.new_empty(query.shape[:-1] + value.shape[-1:])


def _placeholder_na2d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None,
                      backend=None, stride=1, return_lse=False):
    kernel_h, kernel_w = kernel_size if isinstance(kernel_size, Sequence) else (kernel_size, kernel_size)
    return _na2d_placeholder(query, key, value, int(kernel_h), int(kernel_w))


def _na2d_flop_handle(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape
    q_shape, v_shape = get_shape(inputs[0]), get_shape(inputs[2])
    kernel_h, kernel_w = inputs[3].toIValue(), inputs[4].toIValue()
    tokens_heads = 1
    for s in q_shape[:-1]:
        tokens_heads *= s
    return tokens_heads * kernel_h * kernel_w * (q_shape[-1] + v_shape[-1])


@contextlib.contextmanager
def na_counting(model: nn.Module) -> Iterator[None]:
    """Within the block, NA layers call the countable placeholder and global attention runs unfused."""
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, 'fused_attn')]
    original = _na_layer.na2d
    try:
        _na_layer.na2d = _placeholder_na2d
        for m, _ in fused:
            m.fused_attn = False
        yield
    finally:
        _na_layer.na2d = original
        for m, value in fused:
            m.fused_attn = value


def count_gmacs(model: nn.Module, input_size: Tuple[int, int, int] = (3, 224, 224), batch_size: int = 1) -> float:
    """fvcore GMACs (1e9 multiply-adds) of one forward of ``model`` on a ``[batch_size, *input_size]`` input.

    Raises:
        ImportError: fvcore is not installed.
    """
    with warnings.catch_warnings():
        # fvcore scripts a helper at import, which recent torch releases flag as deprecated
        warnings.filterwarnings('ignore', message='.*torch.jit.script.*', category=FutureWarning)
        try:
            from fvcore.nn import FlopCountAnalysis
        except ImportError as e:
            raise ImportError('count_gmacs needs fvcore: pip install fvcore') from e
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(batch_size, *input_size, device=param.device if param is not None else None)
    try:
        with na_counting(model), torch.no_grad():
            counter = FlopCountAnalysis(model, x).set_op_handle('zoo_flops::na2d', _na2d_flop_handle)
            counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = counter.total()
    finally:
        model.train(was_training)
    return total / 1e9


# Bi-level routing attention (zoo.layers.routing) needs no placeholder op: its layers carry ``fused_attn`` like timm's
# attention, so ``na_counting`` switches them to ``gather_routed_attention``, the official gather followed by two
# matmuls that fvcore counts as ``B * heads * regions * M * topk * Mk * (head_dim + head_dim_v)`` MACs over the padded
# map, plus the routing-logit matmul ``B * regions * regions * qk_dim``; the gather, the region means and top-k are
# free. That is how the official BiFormer numbers were counted (biformer_tiny 2.228 GMACs at 224 px).
