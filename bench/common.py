"""Timing harness shared by the benchmark scripts: warm-up, synchronisation, median of repeats, markdown tables.

Candidates of one row are timed round-robin (one call of each per round), so a shared machine slowing down
mid-run affects all of them alike and the ratios printed beside them stay meaningful.
"""
from __future__ import annotations

import math
import platform
import statistics
import time
from typing import Callable, Mapping, Sequence

import torch

__all__ = ['sync', 'time_fns', 'time_fn', 'peak_memory', 'markdown_table', 'fmt_ms', 'fmt_ratio', 'machine']


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels on ``device`` (no-op on CPU)."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def time_fns(
        fns: Mapping[str, Callable[[], object]],
        device: torch.device | str = 'cpu',
        warmup: int = 2,
        repeats: int = 10,
        budget_s: float = 10.0,
        stat: str = 'median',
) -> dict[str, float]:
    """Median (or minimum) wall time in seconds of each callable, timed round-robin after ``warmup`` calls each.

    Args:
        fns: name -> callable without arguments.
        device: where the callables queue work; synchronised around every call.
        warmup: untimed calls per callable (compilation, autotuning, caches); at least one.
        repeats: timed calls per callable, fewer when the slowest would exceed ``budget_s`` (never below 1).
        budget_s: time allowed to the timed calls of the slowest callable.
        stat: 'median', or 'min' on a machine shared with other jobs (their load only ever adds time).
    """
    slowest = 0.0
    for fn in fns.values():
        for _ in range(max(warmup, 1)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
        slowest = max(slowest, time.perf_counter() - start)
    repeats = max(1, min(repeats, int(budget_s / max(slowest, 1e-9))))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    reduce = {'median': statistics.median, 'min': min}[stat]
    return {name: reduce(times) for name, times in samples.items()}


def time_fn(fn: Callable[[], object], device: torch.device | str = 'cpu', warmup: int = 2, repeats: int = 10,
            budget_s: float = 10.0, stat: str = 'median') -> float:
    """Median (or minimum) wall time in seconds of one callable; see :func:`time_fns`."""
    return time_fns({'fn': fn}, device, warmup, repeats, budget_s, stat)['fn']


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """Peak CUDA memory in bytes allocated by ``fn`` above what was allocated before it; None off CUDA."""
    device = torch.device(device)
    if device.type != 'cuda':
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def fmt_ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return 'n/a'
    ms = seconds * 1e3
    return f'{ms:.3g}' if ms < 100 else f'{ms:.0f}'


def fmt_ratio(numerator: float | None, denominator: float | None) -> str:
    """``numerator / denominator`` as ``12.3x``; 'n/a' when either is missing."""
    if numerator is None or denominator is None or math.isnan(numerator) or math.isnan(denominator):
        return 'n/a'
    ratio = numerator / denominator
    return f'{ratio:.3g}x' if ratio < 100 else f'{ratio:.0f}x'


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; every cell is printed with ``str``."""
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join('---' for _ in headers) + '|']
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


def machine(device: torch.device | str) -> str:
    """One line naming the device, the torch version and, on CPU, the threads used."""
    device = torch.device(device)
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = f'{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads'
    return f'{name}; torch {torch.__version__}'
