"""Zoo tests run tiny models: one intra-op thread is faster for them than several, and stays fast when other
processes share the cores (OpenMP barriers of an oversubscribed pool can cost 10-100x)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
