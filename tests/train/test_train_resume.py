"""``fit --ckpt_path last`` continues a stopped run exactly: the resumed losses equal the uninterrupted run's.

The interruption is ``StopAfter`` (a clean stop that keeps the ``max_epochs`` schedule, like a killed job whose
last checkpoint is on disk). Mixup/CutMix, drop path and shifted-digit augmentation are on, so every source of
randomness (sample order, augmentation, drop path, mixing) must be restored for the losses to match bit for bit.
"""
import csv
import os
from pathlib import Path

import pytest
import torch
from train_helpers import DEMO, QUIET, logger_args, run_cli
from unsafe_pickles import CreatesFile

from zoo.train.errors import ConfigError

RUN = [
    'fit', '-c', DEMO, *QUIET,
    '--model.drop_path_rate', '0.1', '--model.mixup', '0.8', '--model.cutmix', '1.0', '--model.lr', '2e-3',
    '--model.warmup_epochs', '1', '--data.init_args.batch_size', '16',
    '--trainer.max_epochs', '3', '--trainer.limit_train_batches', '3', '--trainer.limit_val_batches', '1',
    '--trainer.num_sanity_val_steps', '1',
]


def _losses(log_dir) -> dict:
    with open(Path(log_dir) / 'metrics.csv', newline='') as f:
        return {int(r['step']): r['train_loss_step'] for r in csv.DictReader(f) if r.get('train_loss_step')}


def _fresh_seed():
    os.environ.pop('PL_GLOBAL_SEED', None)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp('uninterrupted')
    _fresh_seed()
    cli = run_cli([*RUN, *logger_args(root, 'full')])
    _fresh_seed()
    losses = _losses(cli.trainer.log_dir)
    assert sorted(losses) == list(range(9))
    return losses, cli.model.model.state_dict()


def _resume(tmp_path, stop_args):
    first = run_cli([*RUN, *logger_args(tmp_path, 'cut'), '--trainer.callbacks+=zoo.train.callbacks.StopAfter',
                     *stop_args])
    _fresh_seed()
    resumed = run_cli([*RUN, *logger_args(tmp_path, 'cut'), '--ckpt_path', 'last'])
    assert Path(resumed.trainer.log_dir) != Path(first.trainer.log_dir)  # a resumed run logs to a new version
    assert (Path(resumed.trainer.log_dir) / 'curves.png').is_file()
    return _losses(first.trainer.log_dir), _losses(resumed.trainer.log_dir), resumed


def test_resume_at_epoch_boundary_is_exact(uninterrupted, tmp_path):
    full, full_weights = uninterrupted
    before, after, resumed = _resume(tmp_path, ['--trainer.callbacks.epochs', '2'])
    assert sorted(before) == list(range(6))
    assert sorted(after) == [6, 7, 8]
    assert {s: full[s] for s in before} == before
    assert {s: full[s] for s in after} == after
    for key, value in resumed.model.model.state_dict().items():
        assert torch.equal(value, full_weights[key]), key


def test_resume_mid_epoch_is_exact(uninterrupted, tmp_path):
    full, full_weights = uninterrupted
    before, after, resumed = _resume(
        tmp_path, ['--trainer.callbacks.steps', '4', '--last_checkpoint.every_n_train_steps', '1'])
    assert sorted(before) == list(range(4))  # stopped after the 2nd of 3 batches of epoch 1
    assert sorted(after) == [4, 5, 6, 7, 8]
    assert {s: full[s] for s in after} == after
    for key, value in resumed.model.model.state_dict().items():
        assert torch.equal(value, full_weights[key]), key


def test_resume_refuses_a_checkpoint_that_carries_code(tmp_path):
    """``--ckpt_path`` is read safely before the run (and by Lightning with ``torch.load(weights_only=True)``): the
    pickle's code is refused, never run, and the error names the file and the global."""
    marker = tmp_path / 'pwned'
    ckpt = tmp_path / 'evil.ckpt'
    torch.save({'state_dict': {}, 'epoch': 0, 'global_step': 0, 'payload': CreatesFile(marker)}, ckpt)
    with pytest.raises(ConfigError, match=r"--ckpt_path: '.*evil.ckpt' refused: the pickle references code outside "
                                          r'the allow-list of safe types \(io.open\); it was not run'):
        run_cli([*RUN, *logger_args(tmp_path, 'evil'), '--trainer.max_epochs', '1', '--ckpt_path', str(ckpt)])
    assert not marker.exists()
