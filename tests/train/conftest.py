"""Fixtures for the training tests: a tiny trained run shared by the session and a clean global seed."""
import os
from pathlib import Path

import pytest
import torch
from train_helpers import DEMO, QUIET, logger_args, run_cli


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    """The in-process runs use one intra-op thread (see train_helpers.subprocess_env); restored after each module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_global_seed_leak():
    """In-process CLI runs call seed_everything, which sets PL_GLOBAL_SEED for the whole process: undo it."""
    saved = os.environ.pop('PL_GLOBAL_SEED', None)
    yield
    os.environ.pop('PL_GLOBAL_SEED', None)
    if saved is not None:
        os.environ['PL_GLOBAL_SEED'] = saved


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory):
    """One short demo fit (nat_test on digits, 1 epoch of 4 batches of 32) shared by the export/predict/error tests.

    Returns ``dict(cli=..., log_dir=..., last=..., best=...)``; the CLI's ``.model`` is the trained module.
    """
    root = tmp_path_factory.mktemp('trained_run')
    saved = os.environ.pop('PL_GLOBAL_SEED', None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures start before the module-scoped _one_thread
    try:
        cli = run_cli([
            'fit', '-c', DEMO, *QUIET, *logger_args(root / 'logs', 'base', 'v0'),
            '--trainer.max_epochs', '1', '--trainer.limit_train_batches', '4', '--trainer.limit_val_batches', '2',
            '--trainer.num_sanity_val_steps', '0', '--data.init_args.batch_size', '32',
        ])
    finally:
        torch.set_num_threads(threads)
        os.environ.pop('PL_GLOBAL_SEED', None)
        if saved is not None:
            os.environ['PL_GLOBAL_SEED'] = saved
    log_dir = Path(cli.trainer.log_dir)
    ckpts = log_dir / 'checkpoints'
    best = next(p for p in ckpts.glob('best-*.ckpt'))
    return dict(cli=cli, root=root, log_dir=log_dir, last=ckpts / 'last.ckpt', best=best)
