"""``python -m bench.gpu_check --rehearsal``: the GPU check end to end on the CPU, so that its first GPU run cannot
fail on a typo. Triton's interpreter runs the correctness cases on tiny shapes in every dtype, the kernels of two
cases are compiled for sm90 by the stand-in driver, and the CUDA tables of bench.na, bench.routing and bench.models
are produced by the same functions on tiny CPU shapes."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_check_rehearsal_runs_clean(tmp_path):
    report = tmp_path / 'report.md'
    env = {key: value for key, value in os.environ.items() if key != 'TRITON_INTERPRET'}
    env['OMP_NUM_THREADS'] = '1'
    result = subprocess.run([sys.executable, '-m', 'bench.gpu_check', '--rehearsal', '--out', str(report)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    text = report.read_text()
    for section in ('## Correctness against the fp64 reference', 'All cases pass.', '## Kernels compiled ahead',
                    '## bench.na', '## bench.routing', '## bench.models'):
        assert section in text, f'{section!r} missing from the report:\n{text[-3000:]}'
    assert 'prewarm error' not in text and '**FAIL**' not in text and '**ERROR**' not in text
    # the rehearsal's dtypes, TF32 through the legacy API included, and the compiled kernels' resources
    for dtype in ('float16', 'bfloat16', 'float32', 'tf32', 'tf32 (legacy API)'):
        assert f'| {dtype} |' in text
    assert text.count('| na_') == 3 and text.count('| bra_') == 3
