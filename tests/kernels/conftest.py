"""Fixtures of the kernel tests (the helpers they use live in ``kernel_helpers.py`` beside this file)."""
import pytest
from kernel_helpers import nan_poisoned_allocations


@pytest.fixture
def nan_poisoning():
    """Every output the kernels allocate starts as NaNs (see :func:`kernel_helpers.nan_poisoned_allocations`)."""
    with nan_poisoned_allocations():
        yield
