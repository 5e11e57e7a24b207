"""Launch-side helpers shared by the ops' Triton launchers (no ``@triton.jit`` here)."""
from __future__ import annotations

import contextlib
import functools

import torch

from .backend import triton_interpreting


def unit_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim has unit stride (strided views are read in place), else a contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def dot_fp32(t: torch.Tensor) -> bool:
    """Whether dot operands must be upcast to fp32: the interpreter's bf16 ``tl.dot`` multiplies raw bit patterns."""
    return t.dtype == torch.bfloat16 and triton_interpreting()


def tf32_allowed() -> bool:
    """Whether torch allows TF32 in fp32 CUDA matmuls.

    Read through the new API (``torch.backends.cuda.matmul.fp32_precision``), which also reflects the legacy
    ``allow_tf32`` flag and ``torch.set_float32_matmul_precision``: reading the legacy flag after the new API was used
    raises "mix of the legacy and new APIs".
    """
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, 'fp32_precision'):  # torch < 2.9: the legacy flag is the only one
        return bool(matmul.allow_tf32)
    return matmul.fp32_precision == 'tf32'


def dot_precision(t: torch.Tensor) -> str:
    """``tl.dot`` input precision: fp32 inputs get about fp32 accuracy (three TF32 products; 'ieee' spills registers
    on sm90) unless torch allows TF32 matmuls."""
    if t.dtype == torch.float32 and not tf32_allowed():
        return 'tf32x3'
    return 'tf32'


def row_alignment(*tensors: torch.Tensor) -> int:
    """Largest power of two, at most 16, dividing every stride but the last of every tensor (in elements).

    The kernels do not specialise strides (one kernel serves every resolution), so this is how they learn that row
    offsets allow 16-byte vector loads.
    """
    align = 16
    for t in tensors:
        for stride in t.stride()[:-1]:
            while stride % align:
                align //= 2
    return align


def target_arch(t: torch.Tensor) -> int:
    """Compute capability the kernels are built for (80 for sm80, 90 for sm90): ``t``'s GPU, else the target of
    Triton's active driver (a stand-in driver that compiles without a GPU); 0 in the interpreter."""
    if t.is_cuda:
        return _capability(t.device.index if t.device.index is not None else torch.cuda.current_device())
    if triton_interpreting():
        return 0
    from triton.runtime.driver import driver
    return driver.active.get_current_target().arch


def on_device_of(t: torch.Tensor):
    """Context making ``t``'s CUDA device current: Triton launches on the current device."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor
