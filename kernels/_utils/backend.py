"""Backend names and the one place an op's backend is chosen.

``backend=None`` picks the fastest valid backend; the environment variable ``ZOO_<OP>_BACKEND`` (for example
``ZOO_NA_BACKEND=torch``) forces one for every call that does not pass ``backend=`` itself.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import torch

from .checks import in_functorch_transform

logger = logging.getLogger('zoo_kernels')

BACKENDS = ('reference', 'torch', 'triton')
# what the Triton kernels of both ops take
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_MAX_HEAD_DIM = 128


def triton_interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_unsupported_reason(tensor: torch.Tensor) -> str | None:
    """Why the Triton backend cannot run on ``tensor``'s device, or None when it can."""
    if not triton_available():
        return 'triton is not installed'
    if tensor.device.type == 'cuda' or (tensor.device.type == 'cpu' and triton_interpreting()):
        return None
    return f'triton needs a CUDA tensor (or TRITON_INTERPRET=1 on CPU), got a tensor on {tensor.device}'


def triton_kernel_unsupported_reason(query: torch.Tensor, value: torch.Tensor) -> str | None:
    """Why the Triton kernels of an op cannot take ``query`` and ``value`` (device, dtype, head dims), or None."""
    reason = triton_unsupported_reason(query)
    if reason is not None:
        return reason
    if in_functorch_transform(query):
        return 'torch.func transforms (vmap, grad, ...) run the torch backend'
    if query.dtype not in TRITON_DTYPES:
        return f'triton supports float16, bfloat16 and float32, got {query.dtype}'
    if max(query.shape[-1], value.shape[-1]) > TRITON_MAX_HEAD_DIM:
        return f'triton supports head_dim up to {TRITON_MAX_HEAD_DIM}, got {query.shape[-1]}/{value.shape[-1]}'
    return None


def resolve_backend(op: str, backend: str | None, triton_reason: Callable[[], str | None]) -> str:
    """Return the backend to run ``op`` with.

    Args:
        op: short op name; the environment variable ``ZOO_<OP>_BACKEND`` is read for it.
        backend: the caller's choice (None: automatic).
        triton_reason: returns why Triton cannot run this call, or None when it can.

    Raises:
        ValueError: an unknown backend name, or an explicit 'triton' that cannot run this call.
    """
    source = 'backend'
    if backend is None:
        env = f'ZOO_{op.upper()}_BACKEND'
        backend = os.environ.get(env) or None
        source = env
    if backend is None:
        # the interpreter is for tests: automatic choice never picks it on CPU
        reason = triton_reason()
        if reason is None and not triton_interpreting():
            return 'triton'
        if not torch.compiler.is_compiling():  # logging would break the graph under torch.compile
            logger.debug('%s: using the torch backend (%s)', op, reason or 'Triton would only be interpreted')
        return 'torch'
    if backend not in BACKENDS:
        raise ValueError(f'{source} must be one of {BACKENDS} or None, got {backend!r}')
    if backend == 'triton':
        reason = triton_reason()
        if reason is not None:
            raise ValueError(f'{source}={backend!r} cannot run this call: {reason}')
    return backend
