"""``bench.kernel_floor``: which kernels it counts as dense and as norm / activation, and a real (tiny) run."""
import pytest
import torch
import torch.nn.functional as F

from bench import kernel_floor


def test_a_gemm_counts_as_dense():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    times = kernel_floor.kernel_times(lambda: a @ b)
    assert times['dense'] > 0 and times['gemm'] == times['dense'] and times['norm_act'] == 0
    assert times['total'] >= times['dense']


def test_gemm_flops_count_the_gemms_only():
    a, b, c = torch.randn(64, 32), torch.randn(32, 16), torch.randn(3, 8, 4, 5)
    conv = torch.nn.Conv2d(8, 8, 3)
    assert kernel_floor.gemm_flops(lambda: a @ b) == 2 * 64 * 32 * 16
    assert kernel_floor.gemm_flops(lambda: torch.bmm(c[0], c[0].transpose(1, 2))) == 2 * 8 * 4 * 5 * 4
    assert kernel_floor.gemm_flops(lambda: (conv(c), F.gelu(a))) == 0


def test_an_activation_and_a_norm_count_as_norm_act():
    x = torch.randn(64, 256)
    times = kernel_floor.kernel_times(lambda: F.layer_norm(F.gelu(x), (256,)))
    assert times['dense'] == 0 and times['norm_act'] > 0


def test_a_convolution_and_its_backward_count_as_dense():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 16, 16)
    assert kernel_floor.kernel_times(lambda: conv(x))['dense'] > 0
    out = conv(x).sum()
    backward = kernel_floor.kernel_times(out.backward)  # convolution_backward, no forward conv
    assert backward['dense'] > 0 and backward['total'] >= backward['dense'] + backward['norm_act']


def test_elementwise_work_is_neither():
    x = torch.randn(1024, 1024)
    times = kernel_floor.kernel_times(lambda: (x * 2 + 1).exp())
    assert times['dense'] == 0 and times['norm_act'] == 0 and times['total'] > 0


def test_tiny_run_prints_one_row_per_model_mode_and_batch(capsys):
    kernel_floor.main(['--models', 'ravlt_test', '--peers', 'nat_test', '--batch', '1', '2', '--img-size', '64',
                       '--rounds', '1', '--repeats', '1', '--budget', '0.1', '--threads', '1'])
    out = capsys.readouterr().out
    assert out.startswith('# bench.kernel_floor:')
    rows = [line.split('|')[1:-1] for line in out.splitlines() if line.startswith('| ') and 'model' not in line]
    assert len(rows) == 2 * 2 * 2  # 2 models x 2 modes x 2 batches
    for cells in rows:
        step, dense, norm_act, total, gflop, gflops = (float(c) for c in cells[3:9])
        assert 0 < dense <= total and norm_act <= total and step > 0 and gflop > 0 and gflops > 0
    assert [cells[9].strip() for cells in rows if cells[0].strip() == 'nat_test'] == ['1x'] * 4


@pytest.mark.parametrize('option', ['--rounds', '--repeats', '--batch', '--threads'])
def test_counts_below_one_are_refused(option, capsys):
    with pytest.raises(SystemExit):
        kernel_floor.main([option, '0'])
    assert f'{option} must be >= 1' in capsys.readouterr().err
