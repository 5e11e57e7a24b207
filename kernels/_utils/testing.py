"""Test helpers shared by the kernel tests: a tolerance check that can fail, NaN poisoning, valid-config sampling."""
from __future__ import annotations

import contextlib
import random
import sys
from typing import Iterator

import pytest
import torch

# (forward, gradient) tolerances on the relative RMS error against the fp32/fp64 reference, per dtype
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (3e-3, 6e-3),
    torch.bfloat16: (2e-2, 3e-2),
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
    """Within the block, ``torch.empty``/``empty_like``/``Tensor.new_empty`` called from ``kernels.*`` return NaNs.

    A kernel that leaves part of its output unwritten then fails loudly instead of passing on stale memory.
    """
    saved = torch.empty, torch.empty_like, torch.Tensor.new_empty
    torch.empty, torch.empty_like = _poisoned(saved[0]), _poisoned(saved[1])
    torch.Tensor.new_empty = _poisoned(saved[2])
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = saved


@pytest.fixture
def nan_poisoning():
    """Pytest fixture around :func:`nan_poisoned_allocations`."""
    with nan_poisoned_allocations():
        yield


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


_GPU_BUILD_PREAMBLE = '''
import torch
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

class Driver:  # enough of a CUDA driver for `warmup` to compile without launching
    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget('cuda', {arch}, 32)

    def get_active_torch_device(self):
        return torch.device('cpu')

driver.set_active(Driver())
import importlib
triton_impl = importlib.import_module({module!r})

class Build:
    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.fn.warmup(*args, grid=grid, **kwargs)

for name in {kernels!r}:
    setattr(triton_impl, name, Build(getattr(triton_impl, name)))
'''


def assert_builds_for_gpu(module: str, kernels: tuple[str, ...], calls: str, arch: int = 90) -> None:
    """Compile an op's Triton kernels for a CUDA target with no GPU present, in a fresh interpreter.

    ``module`` is the launcher module (bound to the name ``triton_impl`` in ``calls``); its ``kernels`` are
    replaced by wrappers that only ``warmup`` (compile) at launch. ``calls`` is Python source calling the launchers.
    Catches what the interpreter accepts but the compiler rejects (non-constexpr globals, type errors).
    """
    import os
    import subprocess
    import textwrap

    source = _GPU_BUILD_PREAMBLE.format(arch=arch, module=module, kernels=kernels) + textwrap.dedent(calls)
    source += "\nprint('built')\n"
    env = {key: value for key, value in os.environ.items() if key != 'TRITON_INTERPRET'}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, '-c', source], env=env, capture_output=True, text=True, timeout=600,
                            cwd=root)
    assert result.returncode == 0 and 'built' in result.stdout, result.stderr[-4000:]
