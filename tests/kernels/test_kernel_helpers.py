"""The comparison helpers of the kernel tests, and that the installed package carries no test code."""
import os

import torch
from kernel_helpers import ROW_TOLERANCES, TOLERANCES, assert_close, assert_rows_close, row_errors

import zoo_kernels


def test_one_wrong_row_fails_the_row_check_but_not_the_rms():
    ref = torch.randn(4, 32, 32, 2, 16, dtype=torch.float64)
    out = ref + 1e-4 * torch.randn_like(ref)
    out[1, 7, 9, 1] = -ref[1, 7, 9, 1]  # one query and head of 8192 gone wrong
    assert_close('out', ref, out, TOLERANCES[torch.float16][0] * 10)
    err = row_errors(ref, out)
    assert err.shape == (4 * 32 * 32 * 2,) and int(err.argmax()) == ((1 * 32 + 7) * 32 + 9) * 2 + 1
    try:
        assert_rows_close('out', ref, out, ROW_TOLERANCES[torch.float16][0])
    except AssertionError as error:
        assert '1 of 8192 rows' in str(error) and 'at row (1, 7, 9, 1)' in str(error)
    else:
        raise AssertionError('the wrong row passed')


def test_row_errors_of_nans_and_near_zero_rows():
    ref = torch.randn(3, 5, dtype=torch.float64)
    ref[2] = 1e-12  # a row that is nearly zero is judged against the typical row's scale, not its own
    out = ref + 1e-6
    assert row_errors(ref, out).max() < 1e-5
    out[0, 3] = float('nan')
    assert torch.isinf(row_errors(ref, out)[0])
    lse = torch.randn(2, 3, 4)
    assert row_errors(lse, lse, vector_dim=False).shape == (24,)


def test_the_installed_package_holds_no_test_code():
    root = os.path.dirname(zoo_kernels.__file__)
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.py'):
                with open(os.path.join(folder, name)) as f:
                    source = f.read()
                assert 'import pytest' not in source and 'torch.empty =' not in source, name
    assert not os.path.exists(os.path.join(root, '_utils', 'testing.py'))
