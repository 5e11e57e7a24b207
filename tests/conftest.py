"""Environment for the whole suite, set before anything imports timm or the kernels.

* ``HF_HUB_OFFLINE=1``: nothing is downloaded.
* ``TRITON_INTERPRET=1`` when no GPU is present: Triton reads it when ``@triton.jit`` decorates a kernel,
  i.e. at import of ``zoo_kernels.*.triton_kernels``, so it must be set here, first.
* Under pytest-xdist (``-n N``), each worker takes its share of the cores for torch's intra-op threads, so that the
  workers do not oversubscribe the machine.
"""
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

if 'PYTEST_XDIST_WORKER_COUNT' in os.environ:
    torch.set_num_threads(max(1, torch.get_num_threads() // int(os.environ['PYTEST_XDIST_WORKER_COUNT'])))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
