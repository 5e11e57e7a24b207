"""The shape-only path of the ops: meta and fake tensors get correctly shaped outputs, and nothing is computed.

A model built on the ``meta`` device, traced under ``FakeTensorMode`` (FSDP meta init, memory estimators) or
shape-checked by timm's tests runs the ops without data: there is nothing to compute, and the backends would
fail (autocast on 'meta', index tables, a ``.item()`` on the routing indices). Under ``torch.compile`` /
``torch.export`` the tensors are fake too, but the trace must record the real computation: the shape-only path
is never taken while compiling.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch._subclasses.fake_tensor import is_fake

__all__ = ['is_shape_only', 'shape_only_attention']


def is_shape_only(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` holds no data (meta device, or a fake tensor outside a compiler trace)."""
    if torch.compiler.is_compiling():
        return False
    return tensor.device.type == 'meta' or is_fake(tensor)


def shape_only_attention(
        inputs: Sequence[torch.Tensor | None],
        out_shape: Sequence[int],
        lse_shape: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty ``(out, lse)`` in the first input's dtype (lse fp32), differentiable towards the floating inputs.

    The backward returns empty gradients of the inputs' shapes and dtypes (None for integer inputs and for inputs
    that need no gradient), so a training step on meta or fake tensors runs end to end.
    """
    return _ShapeOnly.apply(tuple(out_shape), tuple(lse_shape), *inputs)


class _ShapeOnly(torch.autograd.Function):

    @staticmethod
    def forward(ctx, out_shape, lse_shape, *inputs):
        query = inputs[0]
        ctx.specs = [
            (t.shape, t.dtype) if t is not None and t.is_floating_point() else None for t in inputs]
        return query.new_empty(out_shape), query.new_empty(lse_shape, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        # new_empty from the incoming gradient keeps its device and its meta / fake nature
        grads = [
            grad_out.new_empty(spec[0], dtype=spec[1]) if spec is not None and needs else None
            for spec, needs in zip(ctx.specs, ctx.needs_input_grad[2:])]
        return (None, None, *grads)
