"""Every Triton kernel of both ops compiled for sm80 and sm90 without a GPU (``python -m bench.build_matrix``).

Neighborhood attention dtype {fp16, bf16, fp32} x head_dim {16, 32, 64, 128} x rank {1, 2, 3}, routing attention
dtype x head_dim x {packed, tiled} regions, forward, dQ and dK/dV (and the atomic dQ), each launched at three
resolutions and batch sizes. Checked: every kernel compiles; its shared memory fits the architecture (a launch
past it fails with OutOfResources); the 16-bit kernels up to head dim 64 spill no register; and every resolution
reuses the kernel compiled for the first (strides and sizes are not specialised). Spills of fp32 and of head dim 128
are reported (BENCHMARKS.md), not failed.

The compiles run in worker processes (one per core) and go to Triton's cache, next to their ptxas figures, so a
rerun with the same kernel sources and launch choices compiles nothing (seconds); a cold run compiles about 370
kernels (see BENCHMARKS.md for the time it takes).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.triton

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CELLS = 2 * 3 * 4 * (3 + 2)  # arch x dtype x head_dim x (NA ranks + BRA tilings)


@pytest.fixture(scope='module')
def matrix(tmp_path_factory):
    out = tmp_path_factory.mktemp('build_matrix') / 'records.json'
    env = {key: value for key, value in os.environ.items() if key != 'TRITON_INTERPRET'}
    result = subprocess.run([sys.executable, '-m', 'bench.build_matrix', '--json', str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=7200)
    records = json.loads(out.read_text()) if out.exists() else []
    print(result.stdout)  # the table, shown with -s or on failure
    return records, result


def test_every_kernel_compiles_for_sm80_and_sm90(matrix):
    records, result = matrix
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cells = {r['cell'] for r in records}
    assert len(cells) == CELLS
    for cell in cells:
        kernels = {r['kernel'] for r in records if r['cell'] == cell}
        assert len(kernels) == 3, f'{cell}: compiled only {sorted(kernels)}'


def test_shared_memory_fits_the_architecture(matrix):
    over = [f"{r['cell']} {r['kernel']}: {r['shared']} B > {r['limit']} B"
            for r in matrix[0] if r['shared'] > r['limit']]
    assert not over, '\n'.join(over)


def test_16bit_kernels_up_to_head_dim_64_spill_nothing(matrix):
    spills = [f"{r['cell']} {r['kernel']} {r['variant']}: {r['spill_stores'] + r['spill_loads']} B"
              for r in matrix[0] if r['dtype'] != 'float32' and r['head_dim'] <= 64
              and r['spill_stores'] + r['spill_loads'] > 0]
    assert not spills, '\n'.join(spills)


def test_one_kernel_serves_every_resolution(matrix):
    rebuilt = [f"{r['cell']} {r['kernel']}: {r['builds']} kernels" for r in matrix[0] if r['builds'] != 1]
    assert not rebuilt, '\n'.join(rebuilt)
