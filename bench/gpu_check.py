"""One command for a GPU: the Triton kernels against the fp64 reference, their resources, then the CUDA benchmarks.

    python -m bench.gpu_check [--out FILE] [--skip-bench] [--no-natten] [--jobs N]
    python -m bench.gpu_check --rehearsal          # CPU: Triton's interpreter, tiny shapes, the same code paths

Sections, printed as Markdown ready for BENCHMARKS.md:

1. Correctness: every case in fp16, bf16, fp32 and fp32 with TF32 (allowed through the new API
   ``torch.backends.cuda.matmul.fp32_precision`` and, on one case, through the legacy
   ``torch.set_float32_matmul_precision``), forward and backward (the loss uses out and lse) through the public API
   with the Triton backend, against the reference run in fp64 on the same values. Cases: the NAT/DiNAT stages at
   224 px with the legacy bias and its gradient and the BiFormer stages at 224 and 512 px, at batch 8, plus head
   dims 16 to 128, 1-D and 3-D, causal, stride, grouped-query heads and soft routing. Every output allocation of
   the kernels is poisoned with NaNs. Each figure is the largest per-row error relative to the row's scale
   (``tests/kernels/kernel_helpers.py``, the comparison of the tests), against ``ROW_TOLERANCES``.
2. Kernels: registers, spill bytes (ptxas), shared memory, warps and stages of every kernel the cases launched.
3. The CUDA tables of ``bench.na`` (bf16, NAT/DiNAT and dense-prediction shapes), ``bench.routing`` and
   ``bench.models`` (``--skip-bench`` leaves them out).

Before the cases run, their kernels are compiled in ``--jobs`` worker processes (``bench.build_matrix``'s stand-in
driver, the same launch arguments, Triton's cache): compilation, not the GPU, is what takes the time. The exit
status is 1 when a case fails or errors; every section is printed regardless.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ('float16', 'bfloat16', 'float32', 'tf32')


@dataclass(frozen=True)
class NACase:
    """A neighborhood-attention problem ``[B, *spatial, heads, D]``."""
    label: str
    batch: int
    spatial: tuple
    heads: int
    head_dim: int
    kernel_size: int
    dilation: int = 1
    stride: int = 1
    causal: bool = False
    rpb: bool = False
    heads_kv: int = 0  # 0: heads

    op = 'na'


@dataclass(frozen=True)
class BRACase:
    """A routed-attention problem ``[B, heads, regions, tokens, D]`` with BiFormer's scale ``(heads * D) ** -0.5``."""
    label: str
    batch: int
    heads: int
    regions: int
    tokens: int
    topk: int
    head_dim: int = 32
    soft: bool = False
    per_head: bool = False

    op = 'bra'


GPU_CASES = [
    NACase('NAT s1', 8, (56, 56), 2, 32, 7, rpb=True),
    NACase('NAT s2', 8, (28, 28), 4, 32, 7, rpb=True),
    NACase('NAT s3', 8, (14, 14), 8, 32, 7, rpb=True),
    NACase('NAT s4', 8, (7, 7), 16, 32, 7, rpb=True),
    NACase('DiNAT s1', 8, (56, 56), 2, 32, 7, dilation=8, rpb=True),
    NACase('DiNAT s2', 8, (28, 28), 4, 32, 7, dilation=4, rpb=True),
    NACase('DiNAT s3', 8, (14, 14), 8, 32, 7, dilation=2, rpb=True),
    NACase('2-D d16', 8, (28, 28), 4, 16, 7),
    NACase('2-D d64', 8, (28, 28), 4, 64, 7, rpb=True),
    NACase('2-D d128', 8, (28, 28), 4, 128, 7),
    NACase('2-D 37x41 d3 gqa', 8, (37, 41), 4, 32, 5, dilation=3, heads_kv=2),
    NACase('2-D causal s2', 8, (30, 30), 4, 32, 6, stride=2, causal=True),
    NACase('1-D k13 d3', 8, (1000,), 4, 64, 13, dilation=3, rpb=True),
    NACase('1-D causal s3 gqa', 8, (777,), 4, 32, 9, stride=3, causal=True, heads_kv=2),
    NACase('3-D', 8, (8, 20, 20), 4, 32, 3, dilation=2, rpb=True),
    BRACase('224 s1', 8, 3, 49, 64, 1),
    BRACase('224 s2', 8, 6, 49, 16, 4),
    BRACase('224 s3', 8, 12, 49, 4, 16),
    BRACase('ADE-512 s1', 8, 2, 64, 256, 1),
    BRACase('224 s2 soft per-head d64', 8, 4, 49, 16, 4, head_dim=64, soft=True, per_head=True),
    BRACase('224 s2 d16', 8, 6, 49, 16, 4, head_dim=16),
    BRACase('224 s2 d128', 8, 2, 49, 16, 4, head_dim=128),
]

REHEARSAL_CASES = [
    # the rehearsal compiles the kernels of the first NA and BRA cases in fp16 for sm90: those of two build-matrix
    # cells (k 7 with the bias gradient, head dim 16; packed 4-token regions with soft routing)
    NACase('NAT-like', 1, (7, 8), 2, 16, 7, rpb=True, heads_kv=1),
    NACase('1-D causal s3 gqa', 1, (20,), 2, 16, 5, stride=3, causal=True, heads_kv=1),
    BRACase('224 s3-like', 1, 2, 5, 4, 3, head_dim=16, soft=True),
    BRACase('tiled', 1, 1, 3, 20, 2, head_dim=16),
]


def load_helpers():
    """The tests' comparison helpers (``tests/kernels/kernel_helpers.py``), loaded by path: tests/ is no package."""
    path = os.path.join(ROOT, 'tests', 'kernels', 'kernel_helpers.py')
    spec = importlib.util.spec_from_file_location('kernel_helpers', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------------
# TF32 through either API, restored through the same API

@contextlib.contextmanager
def precision(dtype: str, legacy: bool = False):
    """fp32 matmuls with TF32 allowed (``dtype == 'tf32'``), set through the new API or the legacy one."""
    import torch
    if dtype != 'tf32':
        yield
        return
    if legacy:
        saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision('high')
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(saved)
    else:
        saved = torch.backends.cuda.matmul.fp32_precision
        torch.backends.cuda.matmul.fp32_precision = 'tf32'
        try:
            yield
        finally:
            torch.backends.cuda.matmul.fp32_precision = saved


def torch_dtype(dtype: str):
    import torch
    return torch.float32 if dtype == 'tf32' else getattr(torch, dtype)


# ----------------------------------------------------------------------------------------------------------------
# the cases: inputs, the public API with the Triton backend, and its launch arguments for compiling without a GPU

def na_inputs(case: NACase, dtype: str, device, seed: int = 0):
    import torch
    gen = torch.Generator(device='cpu').manual_seed(seed)
    heads_kv = case.heads_kv or case.heads
    rank = len(case.spatial)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=torch_dtype(dtype))

    q = rand(case.batch, *case.spatial, case.heads, case.head_dim)
    k = rand(case.batch, *case.spatial, heads_kv, case.head_dim)
    v = rand(case.batch, *case.spatial, heads_kv, case.head_dim)
    rpb = rand(case.heads, *(2 * case.kernel_size - 1,) * rank).float() if case.rpb else None
    return q, k, v, rpb


def na_args(case: NACase) -> dict:
    rank = len(case.spatial)
    return dict(kernel_size=(case.kernel_size,) * rank, dilation=(case.dilation,) * rank, stride=(case.stride,) * rank,
                is_causal=(case.causal,) * rank)


def bra_inputs(case: BRACase, dtype: str, device, seed: int = 0):
    import torch
    gen = torch.Generator(device='cpu').manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=torch_dtype(dtype))

    shape = (case.batch, case.heads, case.regions, case.tokens, case.head_dim)
    q, k, v = rand(*shape), rand(*shape), rand(*shape)
    lead = (case.batch, case.heads, case.regions) if case.per_head else (case.batch, case.regions)
    r_idx = torch.rand(*lead, case.regions, generator=gen).topk(case.topk, dim=-1).indices.to(device)
    r_weight = (torch.rand(*lead, case.topk, generator=gen) + 0.5).to(device) if case.soft else None
    return q, k, v, r_idx, r_weight


def bra_scale(case: BRACase) -> float:
    return (case.heads * case.head_dim) ** -0.5


def run_public(case, dtype: str, device, helpers) -> dict:
    """Forward and backward of ``case`` through the public API (Triton) and the fp64 reference: per-row errors."""
    import torch

    from zoo_kernels import neighborhood_attention, routed_attention

    if case.op == 'na':
        q, k, v, rpb = na_inputs(case, dtype, device)
        tensors = {'q': q, 'k': k, 'v': v, 'rpb': rpb}

        def call(t, backend):
            return neighborhood_attention(t['q'], t['k'], t['v'], rpb=t['rpb'], scale=case.head_dim ** -0.5,
                                          backend=backend, return_lse=True, **na_args(case))
        names = {'q': 'dq', 'k': 'dk', 'v': 'dv', 'rpb': 'drpb'}
    else:
        q, k, v, r_idx, r_weight = bra_inputs(case, dtype, device)
        tensors = {'q': q, 'k': k, 'v': v, 'w': r_weight}

        def call(t, backend):
            return routed_attention(t['q'], t['k'], t['v'], r_idx, scale=bra_scale(case), r_weight=t['w'],
                                    backend=backend, return_lse=True)
        names = {'q': 'dq', 'k': 'dk', 'v': 'dv', 'w': 'dw'}
    leaves = {n: t.requires_grad_() for n, t in tensors.items() if t is not None}
    ref_leaves = {n: t.detach().double().requires_grad_() for n, t in leaves.items()}
    ref_out, ref_lse = call({**tensors, **ref_leaves}, 'reference')
    with helpers.nan_poisoned_allocations():
        out, lse = call(tensors, 'triton')
    gen = torch.Generator(device='cpu').manual_seed(1)
    grad_out = torch.randn(ref_out.shape, generator=gen, dtype=torch.float64).to(device)
    grad_lse = torch.randn(ref_lse.shape, generator=gen, dtype=torch.float64).to(device)
    ref_grads = torch.autograd.grad((ref_out * grad_out).sum() + (ref_lse * grad_lse).sum(), list(ref_leaves.values()))
    with helpers.nan_poisoned_allocations():
        grads = torch.autograd.grad((out.double() * grad_out).sum() + (lse.double() * grad_lse).sum(),
                                    list(leaves.values()))
    errors = {'out': helpers.row_errors(ref_out, out).max().item(),
              'lse': helpers.row_errors(ref_lse, lse, vector_dim=False).max().item()}
    for name, ref_grad, grad in zip(leaves, ref_grads, grads):
        errors[names[name]] = helpers.row_errors(ref_grad, grad).max().item()
    return errors


def launch_compile_only(case, dtype: str) -> None:
    """The launcher calls that ``run_public`` makes on a GPU, on small CPU tensors (a stand-in driver compiles).

    Batch, sizes, head counts and strides are runtime arguments of the kernels, so a smaller problem of the same
    dtype, head dim, kernel size and flags compiles the kernels that the GPU run launches.
    """
    if case.op == 'na':
        from zoo_kernels.neighborhood import triton_impl
        small = replace(case, batch=1, heads=min(case.heads, 2), heads_kv=1 if case.heads_kv else 0)
        q, k, v, rpb = na_inputs(small, dtype, 'cpu')
        a = na_args(case)
        args = (a['kernel_size'], a['dilation'], a['stride'], a['is_causal'], case.head_dim ** -0.5)
        with precision(dtype):
            out, lse = triton_impl.na_fwd(q, k, v, rpb, *args)
            triton_impl.na_bwd(out, lse, q, k, v, rpb, out, lse, *args, rpb is not None)
    else:
        from zoo_kernels.routing import triton_impl
        small = replace(case, batch=1, heads=min(case.heads, 2), regions=min(case.regions, 4),
                        topk=min(case.topk, 4))
        q, k, v, r_idx, r_weight = bra_inputs(small, dtype, 'cpu')
        with precision(dtype):
            out, lse = triton_impl.bra_fwd(q, k, v, r_idx, r_weight, bra_scale(case))
            triton_impl.bra_bwd(out, lse, q, k, v, r_idx, r_weight, out, lse, bra_scale(case), r_weight is not None,
                                True)


# ----------------------------------------------------------------------------------------------------------------
# compile ahead, in parallel

def _prewarm_worker(arch: int, jobs: list) -> None:
    import importlib

    from triton.runtime.driver import driver as active

    from bench.build_matrix import KERNELS, StandInDriver, _Warmup, kernel_record

    active.set_active(StandInDriver(arch))
    sink: list = []
    for module_name, names, _ in KERNELS.values():
        module = importlib.import_module(module_name)
        for name in names:
            setattr(module, name, _Warmup(getattr(module, name), sink))
    for kind, fields, dtype in jobs:
        case = (NACase if kind == 'na' else BRACase)(**{k: tuple(v) if isinstance(v, list) else v
                                                         for k, v in fields.items()})
        try:
            launch_compile_only(case, dtype)
        except Exception as error:  # noqa: BLE001  (the GPU run reports it again, with its own traceback)
            print('PREWARM-ERROR ' + json.dumps([case.label, dtype, f'{type(error).__name__}: {error}'[:500]]),
                  flush=True)
    for name, kernel, _, log, _ in sink:
        print('PREWARM ' + json.dumps([kernel.hash, kernel_record(name, kernel, arch, log)]), flush=True)


def prewarm(work: list, arch: int, jobs: int) -> tuple[list, float, list]:
    """Compile the kernels of ``work`` ((case, dtype) pairs) for ``arch`` in ``jobs`` worker processes.

    Returns (records of the compiled kernels, seconds, errors).
    """
    work = [(case.op, asdict(case), dtype) for case, dtype in work]
    jobs = max(1, min(jobs, len(work)))
    env = {key: value for key, value in os.environ.items() if key != 'TRITON_INTERPRET'}
    env['TRITON_DUMP_PTXAS_LOG'] = '1'
    start = time.perf_counter()
    code = ('import json, sys; from bench.gpu_check import _prewarm_worker; '
            '_prewarm_worker(int(sys.argv[1]), json.loads(sys.argv[2]))')
    procs = [subprocess.Popen([sys.executable, '-c', code, str(arch), json.dumps(work[i::jobs])], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(jobs)]
    records, errors = {}, []
    for proc in procs:
        out, err = proc.communicate()
        for line in out.splitlines():
            if line.startswith('PREWARM '):
                key, record = json.loads(line[8:])
                records[key] = record
            elif line.startswith('PREWARM-ERROR '):
                errors.append(json.loads(line[14:]))
        if proc.returncode != 0:
            errors.append(['worker', '', err.strip().splitlines()[-1] if err.strip() else f'rc {proc.returncode}'])
    return list(records.values()), time.perf_counter() - start, errors


# ----------------------------------------------------------------------------------------------------------------
# sections

def correctness(cases, dtypes, device, helpers) -> tuple[str, int]:
    """The correctness table and the number of failed cases."""
    from .common import markdown_table

    columns = ('out', 'lse', 'dq', 'dk', 'dv', 'drpb / dw')
    rows, failed = [], 0
    runs = [(case, dtype, False) for case in cases for dtype in dtypes]
    if 'tf32' in dtypes:
        runs.append((cases[0], 'tf32', True))
    for case, dtype, legacy in runs:
        fwd_tol, grad_tol = helpers.ROW_TOLERANCES[torch_dtype(dtype) if dtype != 'tf32' else 'tf32']
        name = dtype + (' (legacy API)' if legacy else '')
        start = time.perf_counter()
        try:
            with precision(dtype, legacy):
                errors = run_public(case, dtype, device, helpers)
        except Exception as error:  # noqa: BLE001  (one failing case must not hide the others)
            failed += 1
            message = f'{type(error).__name__}: {str(error).splitlines()[0][:150]}'
            rows.append([describe(case), name] + ['error'] * len(columns) + ['-', f'**ERROR** {message}'])
            traceback.print_exc(file=sys.stderr)
            continue
        errors['drpb / dw'] = errors.pop('drpb', errors.pop('dw', None))
        ok = all(errors[c] is None or errors[c] <= (fwd_tol if c in ('out', 'lse') else grad_tol) for c in columns)
        failed += not ok
        cells = ['-' if errors[c] is None else f'{errors[c]:.1e}' for c in columns]
        rows.append([describe(case), name, *cells, f'{fwd_tol:.0e} / {grad_tol:.0e}',
                     f'ok ({time.perf_counter() - start:.1f} s)' if ok else '**FAIL**'])
        print('| ' + ' | '.join(map(str, rows[-1])) + ' |', file=sys.stderr, flush=True)  # progress
    headers = ['case', 'dtype', *columns, 'tolerance fwd / grad', 'status']
    return markdown_table(headers, rows), failed


def describe(case) -> str:
    if case.op == 'na':
        size = 'x'.join(map(str, case.spatial))
        extra = f' d{case.dilation}' if case.dilation > 1 else ''
        extra += f' s{case.stride}' if case.stride > 1 else ''
        extra += ' causal' if case.causal else ''
        extra += ' rpb' if case.rpb else ''
        extra += f' kv{case.heads_kv}' if case.heads_kv else ''
        return f'NA {case.label}: {size} B{case.batch} h{case.heads} D{case.head_dim} k{case.kernel_size}{extra}'
    extra = (' soft' if case.soft else '') + (' per-head' if case.per_head else '')
    return (f'BRA {case.label}: B{case.batch} h{case.heads} nR{case.regions} M{case.tokens} topk{case.topk} '
            f'D{case.head_dim}{extra}')


def launched_kernels() -> list:
    """(function name, compiled kernel) of every kernel compiled or loaded in this process."""
    from zoo_kernels.neighborhood import triton_kernels as na_kernels
    from zoo_kernels.routing import triton_kernels as bra_kernels

    found = []
    for fn in (na_kernels.na_fwd_kernel, na_kernels.na_bwd_kernel_dq, na_kernels.na_bwd_kernel_dkv,
               bra_kernels.bra_fwd_kernel, bra_kernels.bra_bwd_kernel_dq, bra_kernels.bra_bwd_kernel_dkv):
        for cache in getattr(fn, 'device_caches', {}).values():
            found += [(fn.__name__, kernel) for kernel in cache[0].values()]
    return found


def bench_tables(device: str, rehearsal: bool, use_natten: bool = True,
                 official_root: str | None = None, compile_mode: str = 'none') -> Iterator[tuple[str, str]]:
    """(title, output) of bench.na, bench.routing and bench.models on CUDA (tiny shapes on CPU in rehearsal).

    bench.models runs under bf16 autocast (mixed-precision training as on a GPU), with the official twin of each
    model that has one when ``official_root`` holds the official checkouts, and every model under ``torch.compile``
    with ``compile_mode`` unless it is 'none'. A table that fails yields its error, and the next one still runs.
    """
    import torch

    from . import models, na, routing

    if rehearsal:
        na_shapes = [na.Shape('rehearsal', 1, (9, 10), 2, 16, 3)]
        bra_shapes = [routing.Shape('rehearsal', 1, 8, 2, 2, 2, head_dim=16)]
        models_argv = ['--device', 'cpu', '--models', 'nat_mini', '--peers', 'convnext_tiny', '--batch', '2',
                       '--img-size', '64', '--repeats', '1', '--budget', '1', '--no-memory', '--amp', 'bf16']
        repeats, dtype = 1, torch.float16
    else:
        na_shapes = [s for s in na.CUDA_SHAPES if s.quick]
        bra_shapes = [s for s in routing.CUDA_SHAPES if s.quick]
        # batch 256: at 64 the eager steps of every model were bound by the host's op dispatch (BENCHMARKS.md, H200)
        models_argv = ['--device', 'cuda', '--batch', '256', '--repeats', '10', '--budget', '5', '--amp', 'bf16']
        repeats, dtype = 10, torch.bfloat16
    if official_root:
        models_argv += ['--officials', '--official-root', official_root]
    if compile_mode != 'none':
        models_argv += ['--compile', compile_mode]
    natten = na.import_natten() if use_natten and not rehearsal else None
    peak_bw = 4.8e12 if 'H200' in _device_name(device) else 3.35e12
    tables = {
        f'bench.na (SOL against {peak_bw / 1e12:.2f} TB/s, 989 TFLOP/s; natten '
        f'{getattr(natten, "__version__", "not installed")})':
            lambda: na.bench_cuda(na_shapes, 'triton', natten, repeats, 'median', peak_bw, 989e12, device=device,
                                  dtype=dtype),
        'bench.routing': lambda: routing.bench_cuda(bra_shapes, 'triton', repeats, peak_bw, 989e12, device=device),
        f'bench.models {" ".join(models_argv)}': lambda: _captured(models.main, models_argv),
    }
    for title, make in tables.items():
        start = time.perf_counter()
        try:
            table = make()
        except Exception as error:  # noqa: BLE001  (one failing table must not hide the others)
            traceback.print_exc(file=sys.stderr)
            table = f'**ERROR** {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ""}'
        yield f'{title} ({time.perf_counter() - start:.0f} s)', table


def _captured(fn, *args) -> str:
    """What ``fn(*args)`` prints."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        fn(*args)
    return buffer.getvalue()


def _device_name(device: str) -> str:
    import torch
    return torch.cuda.get_device_name(device) if device == 'cuda' else 'CPU (Triton interpreter)'


def check_kernels(args, cases, device: str, arch: int, helpers, report: list) -> int:
    """Sections 1 and 2 appended to ``report``: compile ahead, the correctness table, the kernels' resources.

    Returns the number of failed cases.
    """
    import torch

    prewarmed = []
    if not args.no_prewarm:
        # the rehearsal compiles the kernels of one NA and one BRA case in fp16: those of two build-matrix cells
        work = ([(REHEARSAL_CASES[0], 'float16'), (REHEARSAL_CASES[2], 'float16')] if args.rehearsal
                else [(case, dtype) for case in cases for dtype in DTYPES])
        prewarmed, seconds, errors = prewarm(work, arch, args.jobs or os.cpu_count() or 1)
        report.append(f'\nCompiled ahead for sm{arch}: {len(prewarmed)} kernels in {seconds:.0f} s'
                      + ''.join(f'\n- prewarm error {label} {dtype}: {msg}' for label, dtype, msg in errors))
    torch.manual_seed(0)
    start = time.perf_counter()
    table, failed = correctness(cases, DTYPES, device, helpers)
    report.append(f'\n## Correctness against the fp64 reference ({time.perf_counter() - start:.0f} s; '
                  f'largest per-row error relative to the row scale)\n\n{table}')
    report.append(f'\n{failed} failed case(s).' if failed else '\nAll cases pass.')
    from .build_matrix import kernel_record, records_table
    if args.rehearsal:
        report.append(f'\n## Kernels compiled ahead for sm{arch} (the interpreter compiles nothing)\n\n'
                      f'{records_table(prewarmed)}')
    else:
        launched = [kernel_record(name, kernel, arch) for name, kernel in launched_kernels()]
        report.append(f'\n## Kernels launched ({len(launched)})\n\n{records_table(launched)}')
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rehearsal', action='store_true',
                        help="CPU only: Triton's interpreter, tiny shapes; kernels compiled for sm90 without a GPU")
    parser.add_argument('--skip-bench', action='store_true', help='leave out the bench.na/routing/models tables')
    parser.add_argument('--no-prewarm', action='store_true', help='compile kernels at their first launch instead')
    parser.add_argument('--no-natten', action='store_true',
                        help="leave natten out of bench.na (its flex backend compiles per shape: minutes)")
    parser.add_argument('--skip-correctness', action='store_true',
                        help='leave out the correctness and kernel sections (only the benchmark tables)')
    parser.add_argument('--official-root', default=None,
                        help="official checkouts: bench.models adds each model's official twin (bench.official)")
    parser.add_argument('--compile', default='none', choices=('none', 'default', 'reduce-overhead', 'max-autotune'),
                        help='bench.models under torch.compile with this mode (reduce-overhead: CUDA graphs)')
    parser.add_argument('--jobs', type=int, default=None, help='compile workers (default: CPU count)')
    parser.add_argument('--out', default=None, help='also write the report to this file')
    args = parser.parse_args(argv)
    if args.rehearsal:
        # before anything imports the kernels: @triton.jit reads it at decoration time
        os.environ['TRITON_INTERPRET'] = '1'
    import torch
    import triton

    if not args.rehearsal and not torch.cuda.is_available():
        print('no CUDA device: run with --rehearsal for the CPU rehearsal', file=sys.stderr)
        return 2
    device = 'cpu' if args.rehearsal else 'cuda'
    cases = REHEARSAL_CASES if args.rehearsal else GPU_CASES
    arch = 90 if args.rehearsal else 10 * torch.cuda.get_device_capability()[0] + torch.cuda.get_device_capability()[1]
    helpers = load_helpers()
    report = [f'# bench.gpu_check on {_device_name(device)} (sm{arch}); torch {torch.__version__}, '
              f'triton {triton.__version__}{" (rehearsal: interpreter, tiny shapes)" if args.rehearsal else ""}']
    total = time.perf_counter()

    def save():  # after every section: a run stopped at its time limit keeps what it has measured
        if args.out:
            with open(args.out, 'w') as f:
                f.write('\n'.join(report) + '\n')

    failed = 0 if args.skip_correctness else check_kernels(args, cases, device, arch, helpers, report)
    print('\n'.join(report), flush=True)
    save()
    if not args.skip_bench:
        for title, table in bench_tables(device, args.rehearsal, not args.no_natten, args.official_root,
                                         args.compile):
            report.append(f'\n## {title}\n\n{table.strip()}')
            print(report[-1], flush=True)
            save()
    report.append(f'\nTotal {time.perf_counter() - total:.0f} s.')
    print(report[-1])
    save()
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
