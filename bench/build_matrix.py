"""Compile every Triton kernel of both ops for sm80 and sm90 without a GPU, and report what each one needs.

    python -m bench.build_matrix [--ops na bra] [--archs 80 90] [--jobs N] [--json FILE]

A stand-in CUDA driver names the target (``GPUTarget('cuda', arch, 32)``) and the launchers of ``triton_impl.py``
run unchanged, tile choice included, with each kernel's ``[grid](...)`` launch replaced by ``JITFunction.warmup``:
what is compiled is exactly what a GPU launch of the same call would compile. For every compiled kernel the
report gives the shared memory (Triton's figure, which the launch checks against the device's limit), registers,
stack frame and spill bytes (``ptxas -v`` with the flags Triton uses), warps and pipeline stages.

Cells: neighborhood attention dtype {fp16, bf16, fp32} x head_dim {16, 32, 64, 128} x rank {1, 2, 3}, with the
legacy bias and its gradient (the kernels' largest variant); routing attention dtype x head_dim x {packed 4-token
regions, tiled 64-token regions} with soft routing and its gradient. Each cell is launched at several resolutions
and batch sizes, which must all reuse one compiled kernel per kernel function.

Compiled kernels come from and go to Triton's cache (``TRITON_CACHE_DIR``, default ``~/.triton/cache``) and the
ptxas figures are stored beside each kernel there, so a rerun compiles nothing. Cells are spread over ``--jobs``
worker processes (compilation holds the GIL: threads do not help).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# most dynamic shared memory per block (bytes) a kernel may use, per compute capability (CUDA programming guide)
SHARED_LIMITS = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}
DTYPES = ('float16', 'bfloat16', 'float32')
HEAD_DIMS = (16, 32, 64, 128)
RANKS = (1, 2, 3)
BRA_TILINGS = ('packed', 'tiled')
PTXAS_FILE = 'zoo_ptxas.json'


@dataclass
class Cell:
    """One configuration of one op: every kernel of its forward and backward is compiled for ``arch``."""
    op: str  # 'na' or 'bra'
    dtype: str
    head_dim: int
    layout: str  # NA: 'rank1' / 'rank2' / 'rank3'; BRA: 'packed' / 'tiled'
    arch: int

    @property
    def name(self) -> str:
        return f'{self.op} {self.dtype} d{self.head_dim} {self.layout} sm{self.arch}'


@dataclass
class Record:
    """What one compiled kernel of a cell needs."""
    cell: str
    op: str
    dtype: str
    head_dim: int
    layout: str
    arch: int
    kernel: str
    variant: str  # the kernel's distinguishing constexprs (kernel_summary)
    shared: int
    limit: int
    num_warps: int
    num_stages: int
    registers: int
    stack: int
    spill_stores: int
    spill_loads: int
    builds: int  # compiled kernels of this variant across the cell's resolutions: 1 when they share one
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    @property
    def fits(self) -> bool:
        return self.shared <= self.limit


def cells(ops=('na', 'bra'), archs=(80, 90)) -> list[Cell]:
    out = []
    for arch in archs:
        for dtype in DTYPES:
            for head_dim in HEAD_DIMS:
                if 'na' in ops:
                    out += [Cell('na', dtype, head_dim, f'rank{rank}', arch) for rank in RANKS]
                if 'bra' in ops:
                    out += [Cell('bra', dtype, head_dim, tiling, arch) for tiling in BRA_TILINGS]
    return out


# ----------------------------------------------------------------------------------------------------------------
# stand-in driver and the compile side (worker processes only: it replaces Triton's active driver)

class StandInDriver:
    """Enough of a CUDA driver for ``JITFunction.warmup`` to compile without a GPU.

    The device index is the compute capability, so one process can hold kernels of several targets.
    """

    def __init__(self, arch: int):
        self.arch = arch

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget('cuda', self.arch, 32)

    def get_active_torch_device(self):
        import torch
        return torch.device('cpu')


class _Warmup:
    """Stands for a ``@triton.jit`` kernel in a launcher module: ``kernel[grid](...)`` compiles, records, returns."""

    def __init__(self, fn, sink: list):
        self.fn = fn
        self.sink = sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            start = time.perf_counter()
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                kernel = self.fn.warmup(*args, grid=grid, **kwargs)
            self.sink.append((self.fn.__name__, kernel, time.perf_counter() - start, log.getvalue(), kwargs))
            return kernel
        return launch


def parse_ptxas(log: str) -> dict | None:
    """Registers, stack frame and spill bytes from a ``ptxas -v`` log (None when the log has none)."""
    regs = re.search(r'Used (\d+) registers', log)
    if regs is None:
        return None
    frame = re.search(r'(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads', log)
    stack, stores, loads = (int(x) for x in frame.groups()) if frame else (0, 0, 0)
    return dict(registers=int(regs.group(1)), stack=stack, spill_stores=stores, spill_loads=loads)


def ptxas_figures(kernel, arch: int, log: str = '') -> dict:
    """ptxas figures of a compiled kernel: from its compile log, else from the cache, else from a ptxas run.

    The figures are stored beside the kernel in Triton's cache (``zoo_ptxas.json``).
    """
    from triton.runtime.cache import get_cache_manager

    manager = get_cache_manager(kernel.hash)
    figures = parse_ptxas(log)
    if figures is None:
        path = manager.get_file(PTXAS_FILE)
        if path is not None:
            with open(path) as f:
                return json.load(f)
        figures = run_ptxas(kernel.asm['ptx'], arch)
    manager.put(json.dumps(figures), PTXAS_FILE, binary=False)
    return figures


def run_ptxas(ptx: str, arch: int) -> dict:
    """``ptxas -v`` on a kernel's PTX with Triton's flags; its figures."""
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'kernel.ptx')
        with open(src, 'w') as f:
            f.write(ptx)
        cmd = [get_ptxas(arch).path, '-lineinfo', '-v', '--regAllocOptLevel=2',
               f'--gpu-name={sm_arch_from_capability(arch)}', src, '-o', os.path.join(tmp, 'kernel.cubin')]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    figures = parse_ptxas(result.stderr + result.stdout)
    if figures is None:
        raise RuntimeError(f'no register count in the ptxas log:\n{result.stderr}')
    return figures


# constexprs that tell kernels apart in a report, in this order (absent ones are skipped)
_SUMMARY = ('K0', 'K1', 'K2', 'S0', 'S1', 'S2', 'T0', 'T1', 'T2', 'U0', 'U1', 'U2', 'M', 'MK', 'G', 'BM', 'BN', 'BD',
            'BDV', 'PACK', 'HAS_RPB', 'HAS_W', 'HAS_DLSE', 'STORE_DS', 'STORE_DW', 'ATOMIC', 'PRECISION', 'ALIGN')


def kernel_summary(kernel) -> str:
    """A short description of a compiled kernel: input dtype and its distinguishing constexprs."""
    fn = kernel.src.fn
    constants = {fn.arg_names[key[0]]: value for key, value in kernel.src.constants.items() if len(key) == 1}
    dtype = str(kernel.src.signature.get('q', '?')).lstrip('*')
    parts = [dtype]
    for name in _SUMMARY:
        if name in constants:
            value = constants[name]
            if isinstance(value, bool):
                if value:
                    parts.append(name)
            else:
                parts.append(f'{name}={value}')
    return ' '.join(parts)


def kernel_record(name: str, kernel, arch: int, log: str = '') -> dict:
    """What a compiled kernel needs: its ptxas figures, shared memory, warps and stages, and the driver's local
    memory figure when the kernel was loaded on a GPU."""
    figures = ptxas_figures(kernel, arch, log)
    return dict(kernel=name, configuration=kernel_summary(kernel), registers=figures['registers'],
                spill_bytes=figures['spill_stores'] + figures['spill_loads'], stack=figures['stack'],
                local_bytes=getattr(kernel, 'n_spills', None), shared=kernel.metadata.shared,
                limit=SHARED_LIMITS.get(arch), num_warps=kernel.metadata.num_warps,
                num_stages=kernel.metadata.num_stages)


def records_table(records: list[dict]) -> str:
    """One row per compiled kernel (see :func:`kernel_record`)."""
    from .common import markdown_table

    rows = []
    for r in sorted(records, key=lambda r: (r['kernel'], r['configuration'])):
        over = r['limit'] is not None and r['shared'] > r['limit']
        rows.append([r['kernel'], r['configuration'], r['registers'], r['spill_bytes'],
                     'n/a' if r['local_bytes'] is None else r['local_bytes'],
                     f'{r["shared"] / 1024:.1f}' + (' **over**' if over else ''), r['num_warps'], r['num_stages']])
    headers = ['kernel', 'configuration', 'registers', 'spill bytes (ptxas)', 'local bytes (driver)', 'shared KiB',
               'warps', 'stages']
    return markdown_table(headers, rows)


def _na_calls(cell: Cell, triton_impl):
    import torch

    dtype = getattr(torch, cell.dtype)
    rank = int(cell.layout[-1])
    # NAT-like windows with the legacy bias; rank 3 keeps the maps small. (batch, spatial) per resolution
    kernel_size, resolutions = {
        1: (7, [(1, (37,)), (2, (150,)), (1, (64,))]),
        2: (7, [(1, (24, 20)), (2, (37, 41)), (1, (56, 56))]),
        3: (3, [(1, (5, 6, 7)), (2, (8, 8, 8)), (1, (6, 11, 9))]),
    }[rank]
    heads, heads_kv = 4, 2
    args = ((kernel_size,) * rank, (2,) + (1,) * (rank - 1), (1,) * rank, (False,) * rank, 0.2)
    for batch, spatial in resolutions:
        q = torch.randn(batch, *spatial, heads, cell.head_dim, dtype=dtype)
        k = torch.randn(batch, *spatial, heads_kv, cell.head_dim, dtype=dtype)
        rpb = torch.randn(heads, *(2 * kernel_size - 1,) * rank)
        out, lse = triton_impl.na_fwd(q, k, k, rpb, *args)
        triton_impl.na_bwd(out, lse, q, k, k, rpb, out, lse, *args, True)


def _bra_calls(cell: Cell, triton_impl):
    import torch

    dtype = getattr(torch, cell.dtype)
    m = 4 if cell.layout == 'packed' else 64
    # (batch, heads, query regions, key regions, topk) per resolution: BiFormer's 7x7 and 8x8 region grids and a
    # padded detection grid
    for batch, heads, n_q, n_k, topk in ((1, 2, 49, 49, 4), (2, 3, 64, 64, 4), (1, 2, 130, 130, 8)):
        q = torch.randn(batch, heads, n_q, m, cell.head_dim, dtype=dtype)
        k = torch.randn(batch, heads, n_k, m, cell.head_dim, dtype=dtype)
        r_idx = torch.randint(0, n_k, (batch, n_q, topk))
        r_weight = torch.rand(r_idx.shape)
        out, lse = triton_impl.bra_fwd(q, k, k, r_idx, r_weight, 0.2)
        triton_impl.bra_bwd(out, lse, q, k, k, r_idx, r_weight, out, lse, 0.2, True, True)
    if cell.layout == 'tiled':
        # the opt-in atomic backward (its own dQ variant) with per-head routing
        r_idx = torch.randint(0, n_k, (batch, heads, n_q, topk))
        triton_impl.bra_bwd(out, lse, q, k, k, r_idx, r_idx.float(), out, lse, 0.2, True, False)


KERNELS = {
    'na': ('zoo_kernels.neighborhood.triton_impl', ('na_fwd_kernel', 'na_bwd_kernel_dq', 'na_bwd_kernel_dkv'),
           _na_calls),
    'bra': ('zoo_kernels.routing.triton_impl', ('bra_fwd_kernel', 'bra_bwd_kernel_dq', 'bra_bwd_kernel_dkv'),
            _bra_calls),
}


def build_cell(cell: Cell, driver: StandInDriver) -> list[Record]:
    """Compile (or load from the cache) every kernel of ``cell``; one record per kernel function."""
    import importlib

    module_name, names, calls = KERNELS[cell.op]
    triton_impl = importlib.import_module(module_name)
    driver.arch = cell.arch
    sink: list = []
    saved = {name: getattr(triton_impl, name) for name in names}
    for name, fn in saved.items():
        setattr(triton_impl, name, _Warmup(fn, sink))
    try:
        calls(cell, triton_impl)
    finally:
        for name, fn in saved.items():
            setattr(triton_impl, name, fn)
    records = []
    groups: dict[tuple, list] = {}
    for entry in sink:
        groups.setdefault((entry[0], kernel_summary(entry[1])), []).append(entry)
    for (name, variant), launches in sorted(groups.items(), key=lambda item: (names.index(item[0][0]), item[0][1])):
        _, kernel, _, log, kwargs = launches[0]
        figures = ptxas_figures(kernel, cell.arch, log)
        config = {key: value for key, value in kwargs.items() if key.startswith('num_')}
        records.append(Record(
            cell=cell.name, op=cell.op, dtype=cell.dtype, head_dim=cell.head_dim, layout=cell.layout, arch=cell.arch,
            kernel=name, variant=variant, shared=kernel.metadata.shared, limit=SHARED_LIMITS[cell.arch],
            num_warps=kernel.metadata.num_warps, num_stages=kernel.metadata.num_stages,
            builds=len({entry[1].hash for entry in launches}), seconds=round(sum(e[2] for e in launches), 2),
            config=config, **figures))
    return records


def _worker(cell_dicts: list[dict]) -> None:
    from triton.runtime.driver import driver as active

    stand_in = StandInDriver(90)
    active.set_active(stand_in)
    for cell in (Cell(**c) for c in cell_dicts):
        try:
            for record in build_cell(cell, stand_in):
                print('RECORD ' + json.dumps(asdict(record)), flush=True)
        except Exception as error:  # noqa: BLE001  (reported per cell, the other cells still build)
            message = f'{type(error).__name__}: {error}'.replace('\n', ' ')[:2000]
            print('ERROR ' + json.dumps({'cell': cell.name, 'error': message}), flush=True)


# ----------------------------------------------------------------------------------------------------------------
# the parent side: spread cells over worker processes, collect records

def build(selected: list[Cell], jobs: int | None = None, timeout: float = 3600) -> tuple[list[Record], dict]:
    """Compile ``selected`` in ``jobs`` worker processes; (records, {cell name: error}).

    Workers run without ``TRITON_INTERPRET`` (the kernels must be real ``JITFunction``s) and with the caller's
    ``TRITON_CACHE_DIR``.
    """
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(selected)))
    env = {key: value for key, value in os.environ.items() if key != 'TRITON_INTERPRET'}
    env['TRITON_DUMP_PTXAS_LOG'] = '1'
    # every worker gets cells of every kind (costs differ most by dtype and head dim)
    shares = [[asdict(c) for c in selected[i::jobs]] for i in range(jobs)]
    procs = [subprocess.Popen([sys.executable, '-m', 'bench.build_matrix', '--_worker', json.dumps(share)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for share in shares]
    records, errors = [], {}
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            errors['timeout'] = f'a worker ran past {timeout:.0f} s'
        for line in out.splitlines():
            if line.startswith('RECORD '):
                records.append(Record(**json.loads(line[7:])))
            elif line.startswith('ERROR '):
                entry = json.loads(line[6:])
                errors[entry['cell']] = entry['error']
        if proc.returncode not in (0, None) and not errors:
            errors['worker'] = err[-4000:]
    return records, errors


def markdown(records: list[Record]) -> str:
    """One row per (op, layout, dtype, head dim), one column per (architecture, kernel):
    'registers / spill bytes / shared KiB, warps w stages s'; of several variants of a kernel (the atomic dQ of
    routing), the most demanding."""
    from .common import markdown_table

    kernel_names = ('fwd', 'dQ', 'dK/dV')
    archs = sorted({r.arch for r in records})
    groups: dict[tuple, dict[tuple, Record]] = {}
    for r in records:
        row = groups.setdefault((r.op, r.layout, r.dtype, r.head_dim), {})
        key = (r.arch, kernel_names[['fwd', 'dq', 'dkv'].index(r.kernel.split('_')[-1] if r.kernel.split('_')[-1]
                                                               in ('dq', 'dkv') else 'fwd')])
        if key not in row or (r.spills, r.shared) > (row[key].spills, row[key].shared):
            row[key] = r
    rows = []
    for (op, layout, dtype, head_dim), kernels in sorted(groups.items(), key=lambda item: (
            tuple(KERNELS).index(item[0][0]), item[0][1], DTYPES.index(item[0][2]), item[0][3])):
        cells_ = []
        for arch in archs:
            for name in kernel_names:
                r = kernels.get((arch, name))
                if r is None:
                    cells_.append('n/a')
                    continue
                over = '' if r.fits else ' **over**'
                spill = f'**{r.spills}**' if r.spills else '0'
                cells_.append(f'{r.registers} / {spill} / {r.shared / 1024:.0f}{over}, {r.num_warps}w{r.num_stages}s')
        rows.append([op, layout, dtype, head_dim, *cells_, max(r.builds for r in kernels.values())])
    headers = ['op', 'layout', 'dtype', 'head dim', *(f'sm{arch} {name}' for arch in archs for name in kernel_names),
               'kernels per variant']
    return markdown_table(headers, rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--ops', nargs='+', default=['na', 'bra'], choices=('na', 'bra'))
    parser.add_argument('--archs', nargs='+', type=int, default=[80, 90])
    parser.add_argument('--dtypes', nargs='+', default=list(DTYPES), choices=DTYPES)
    parser.add_argument('--head-dims', nargs='+', type=int, default=list(HEAD_DIMS))
    parser.add_argument('--jobs', type=int, default=None, help='worker processes (default: CPU count)')
    parser.add_argument('--json', default=None, help='also write the records to this file')
    parser.add_argument('--_worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker is not None:
        _worker(json.loads(args._worker))
        return 0
    selected = [c for c in cells(args.ops, args.archs) if c.dtype in args.dtypes and c.head_dim in args.head_dims]
    start = time.perf_counter()
    records, errors = build(selected, args.jobs)
    elapsed = time.perf_counter() - start
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([asdict(r) for r in records], f, indent=1)
    print(f'# Triton build matrix: {len(selected)} cells, {len(records)} kernels, {elapsed:.0f} s '
          f'({args.jobs or os.cpu_count()} jobs); each cell: registers / spill bytes / shared KiB, warps and '
          f'stages\n')
    print(markdown(records))
    for name, error in errors.items():
        print(f'\nFAILED {name}: {error}')
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
