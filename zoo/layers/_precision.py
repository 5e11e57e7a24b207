"""Precision helpers of the linear-attention layers (InLine, RALA, flow attention): their token sums span the whole map,
so their cores run in float32 for float16 inputs (and RALA's for bfloat16 ones too), with autocast switched off around
them."""
from __future__ import annotations

import contextlib

import torch


@torch.jit.unused
def autocast_off(device: torch.device):
    """Autocast switched off for ``device`` where it is on (meta tensors have no autocast state)."""
    if device.type in ('cpu', 'cuda', 'xpu', 'mps') and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def compute_dtype(dtype: torch.dtype, keep_bfloat16: bool = False) -> torch.dtype:
    """float32 for 16-bit inputs (the token sums), else the input dtype; with ``keep_bfloat16`` bfloat16 stays (it
    has float32's range, so its sums cannot overflow: only float16 is widened)."""
    if dtype == torch.float16 or (dtype == torch.bfloat16 and not keep_bfloat16):
        return torch.float32
    return dtype
