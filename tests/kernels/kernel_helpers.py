"""Helpers of the kernel tests: tolerance checks that can fail, NaN poisoning, valid-config sampling.

Plain torch (no pytest): ``bench/gpu_check.py`` loads this file too, so the GPU check and the tests judge a kernel
by the same comparison. The ``nan_poisoning`` fixture lives in ``tests/kernels/conftest.py``.
"""
from __future__ import annotations

import contextlib
import random
import sys
from typing import Iterator

import torch

# where backend='triton' runs: the GPU, or Triton's interpreter on the CPU (tests/conftest.py sets TRITON_INTERPRET=1
# when no GPU is present)
TRITON_DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

# (forward, gradient) tolerances on the relative RMS error against the fp32/fp64 reference, per dtype
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (3e-3, 6e-3),
    torch.bfloat16: (2e-2, 3e-2),
}

# (forward, gradient) tolerances on the largest error of any row (see row_errors), per dtype. A row is one query
# (key, for dK/dV) and head: one wrong row among thousands passes a whole-tensor RMS, not this. About 4x the
# largest row errors of the interpreter (same roundings as a GPU) on 14x14 maps with the bias gradient: fp16 7e-4
# forward, 2.3e-3 gradients; bf16 1.2e-2, 3.7e-2. 'tf32' is fp32 with TF32 products allowed: the inputs themselves
# are rounded to 10-bit mantissas, which the reference does not see
ROW_TOLERANCES = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (1e-4, 1e-3),
    'tf32': (1e-2, 3e-2),
    torch.float16: (4e-3, 1e-2),
    torch.bfloat16: (5e-2, 1.5e-1),
}


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, ratio: float, atol: float = 1e-6) -> None:
    """Pass when ``max|ref - out| <= atol`` or the relative RMS error ``||ref - out|| / ||ref||`` is below ratio.

    NaNs anywhere fail, and so does a shape mismatch.
    """
    assert ref.shape == out.shape, f'{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}'
    ref, out = ref.detach().double(), out.detach().double()
    assert not torch.isnan(ref).any(), f'{name}: reference has NaNs'
    assert not torch.isnan(out).any(), f'{name}: output has NaNs'
    diff = (ref - out).abs()
    max_err = diff.max().item() if diff.numel() else 0.0
    if max_err <= atol:
        return
    rel = (diff.norm() / ref.norm().clamp_min(1e-30)).item()
    assert rel <= ratio, f'{name}: relative RMS error {rel:.3e} > {ratio:.1e} (max abs error {max_err:.3e})'


def row_errors(ref: torch.Tensor, out: torch.Tensor, vector_dim: bool = True) -> torch.Tensor:
    """Largest error of every row of ``out``, relative to the row's scale: fp64, one value per row.

    A row is the last dim (a head's output vector of one query, a gradient row of one key, ...) or, with
    ``vector_dim=False``, a single element (the log-sum-exp of one query and head). The scale of a row is its
    largest reference magnitude, floored at the RMS of the whole reference, so that a row whose exact value is
    nearly zero is judged on the absolute error a typical row may have. NaNs give an infinite error.
    """
    ref, out = ref.detach().double(), out.detach().double()
    if not vector_dim:
        ref, out = ref.unsqueeze(-1), out.unsqueeze(-1)
    ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
    if ref.numel() == 0:
        return ref.new_zeros(ref.shape[0])
    floor = ref.square().mean().sqrt().clamp_min(1e-30)
    scale = ref.abs().amax(-1).clamp_min(floor)
    err = (out - ref).abs().amax(-1) / scale
    return torch.where(torch.isnan(out).any(-1), torch.full_like(err, float('inf')), err)


def assert_rows_close(name: str, ref: torch.Tensor, out: torch.Tensor, tol: float, vector_dim: bool = True) -> None:
    """Every row of ``out`` within ``tol`` of the reference (see :func:`row_errors`); the message names the worst."""
    assert ref.shape == out.shape, f'{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}'
    assert not torch.isnan(ref).any(), f'{name}: reference has NaNs'
    err = row_errors(ref, out, vector_dim)
    if err.numel() == 0:
        return
    worst = int(err.argmax())
    bad = int((err > tol).sum())
    shape = tuple(ref.shape[:-1] if vector_dim else ref.shape)
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), shape)) if shape else ()
    assert bad == 0, (f'{name}: {bad} of {err.numel()} rows have a relative error above {tol:.1e}; the worst, '
                      f'{err[worst].item():.3e}, at row {index}')


# the ways a user allows TF32 in fp32 CUDA matmuls: torch's new API, its global default, the legacy flag, and the
# matmul precision
TF32_APIS = ('fp32_precision', 'global_fp32_precision', 'allow_tf32', 'set_float32_matmul_precision')


@contextlib.contextmanager
def tf32_allowed_through(api: str) -> Iterator[None]:
    """Within the block, torch allows TF32 in fp32 CUDA matmuls, set through ``api`` (one of ``TF32_APIS``).

    Afterwards the setting is undone through the same API and both of torch's settings are restored through the new
    one, so that the legacy flag can be read again (torch raises on reading it after a mix of the two APIs).
    """
    matmul = torch.backends.cuda.matmul
    saved = torch.backends.fp32_precision, matmul.fp32_precision
    undo = {
        'fp32_precision': lambda: setattr(matmul, 'fp32_precision', saved[1]),
        'global_fp32_precision': lambda: setattr(torch.backends, 'fp32_precision', saved[0]),
        'allow_tf32': lambda: setattr(matmul, 'allow_tf32', False),
        'set_float32_matmul_precision': lambda: torch.set_float32_matmul_precision('highest'),
    }[api]
    if api == 'fp32_precision':
        matmul.fp32_precision = 'tf32'
    elif api == 'global_fp32_precision':
        torch.backends.fp32_precision = 'tf32'
    elif api == 'allow_tf32':
        matmul.allow_tf32 = True
    else:
        torch.set_float32_matmul_precision('high')
    try:
        yield
    finally:
        undo()
        torch.backends.fp32_precision, matmul.fp32_precision = saved


def _poisoned(fn):
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        caller = sys._getframe(1).f_globals.get('__name__', '')
        if caller.startswith('zoo_kernels.') and isinstance(out, torch.Tensor) and out.is_floating_point():
            out.fill_(float('nan'))
        return out
    return wrapper


@contextlib.contextmanager
def nan_poisoned_allocations() -> Iterator[None]:
    """Within the block, ``torch.empty``/``empty_like``/``Tensor.new_empty`` called from ``zoo_kernels.*`` return
    NaNs, on every device.

    A kernel that leaves part of its output unwritten then fails loudly instead of passing on stale memory.
    """
    saved = torch.empty, torch.empty_like, torch.Tensor.new_empty
    torch.empty, torch.empty_like = _poisoned(saved[0]), _poisoned(saved[1])
    torch.Tensor.new_empty = _poisoned(saved[2])
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = saved


def sample_na_configs(count: int, rank: int, seed: int, max_size: int = 12) -> list[dict]:
    """``count`` random valid neighborhood-attention configurations, reproducible from ``seed``.

    Each dict has ``spatial``, ``kernel_size``, ``dilation``, ``stride``, ``is_causal`` (per-axis tuples)
    and ``use_rpb`` (only where the bias is allowed). Every draw respects ``k * d <= size`` and ``s <= k``.
    """
    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        spatial, kernel, dilation, stride, causal = [], [], [], [], []
        for _axis in range(rank):
            size = rng.randint(2, max_size)
            k = rng.randint(2, size)
            d = rng.randint(1, size // k)
            spatial.append(size)
            kernel.append(k)
            dilation.append(d)
            stride.append(rng.randint(1, k) if rng.random() < 0.3 else 1)
            causal.append(rng.random() < 0.25)
        rpb_ok = all(k % 2 == 1 for k in kernel) and not any(causal) and all(s == 1 for s in stride)
        configs.append(dict(
            spatial=tuple(spatial), kernel_size=tuple(kernel), dilation=tuple(dilation), stride=tuple(stride),
            is_causal=tuple(causal), use_rpb=rpb_ok and rng.random() < 0.7))
    return configs
