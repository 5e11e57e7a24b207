"""``train.py``: the demo in a subprocess, 2-process CPU DDP, predict CSV, misconfiguration errors, demo accuracy."""
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import DDP_CPU, DEMO, QUIET, REPO, explain, logger_args, run_cli, run_train_py, subprocess_env

from zoo.train.errors import ConfigError


def _metrics(log_dir: Path):
    with open(log_dir / 'metrics.csv', newline='') as f:
        return list(csv.DictReader(f))


def test_import_zoo_does_not_import_lightning():
    code = ('import sys, zoo, zoo.weights, zoo.weights.export, timm; timm.create_model("nat_test"); '
            'bad = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", '
            '"lightning_fabric", "torchmetrics", "jsonargparse")); print(bad); sys.exit(1 if bad else 0)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=str(REPO), env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f'import zoo imported: {proc.stdout} {proc.stderr[-2000:]}'


def test_demo_fit_a_few_steps_in_subprocess(tmp_path):
    proc = run_train_py([
        'fit', '-c', DEMO, *logger_args(tmp_path / 'logs', 'demo'), '--trainer.max_epochs', '1',
        '--trainer.limit_train_batches', '3', '--trainer.limit_val_batches', '2', '--trainer.log_every_n_steps', '1',
        '--trainer.enable_progress_bar', 'false',
    ], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    run = tmp_path / 'logs' / 'demo' / 'version_0'
    assert (run / 'config.yaml').is_file()
    assert (run / 'checkpoints' / 'last.ckpt').is_file()
    assert list((run / 'checkpoints').glob('best-epoch000-acc*.ckpt'))
    assert (run / 'curves.png').stat().st_size > 1000
    rows = _metrics(run)
    assert len([r['train_loss_step'] for r in rows if r.get('train_loss_step')]) == 3
    assert any(r.get('val_acc') for r in rows)
    assert any(r.get('lr-AdamW/pg1') or r.get('lr-AdamW') for r in rows)


def test_ddp_two_cpu_processes(tmp_path):
    proc = run_train_py([
        'fit', '-c', DEMO, '-c', DDP_CPU, *logger_args(tmp_path / 'logs', 'ddp'),
        '--trainer.max_epochs', '1', '--trainer.limit_train_batches', '2', '--trainer.limit_val_batches', '3',
        '--trainer.enable_progress_bar', 'false', '--data.init_args.batch_size', '16',
    ], cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout + proc.stderr
    assert 'distributed_backend=gloo' in out
    assert 'global batch = 16 per device x 2 device(s)' in out
    assert "adamw: torch's fused implementation" in out  # chosen under DDP too
    runs = list((tmp_path / 'logs' / 'ddp').glob('version_*'))
    assert len(runs) == 1, runs
    rows = _metrics(runs[0])
    assert any(r.get('val_acc') for r in rows)
    assert (runs[0] / 'checkpoints' / 'last.ckpt').is_file()


def test_demo_trains_with_the_fused_optimizer(trained_run):
    """The demo's AdamW is torch's fused one (CPU, full precision, clipping), and its checkpoint says so: a resumed
    run keeps the implementation the checkpoint was trained with (torch restores each group's ``fused``)."""
    optimizer = trained_run['cli'].trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults['fused'] is True
    saved = torch.load(trained_run['last'], map_location='cpu', weights_only=True)['optimizer_states'][0]
    assert saved['param_groups'] and all(g['fused'] is True for g in saved['param_groups'])


def _write_digit_pngs(folder: Path, count: int = 6) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
        Image.fromarray(img, mode='L').save(folder / f'digit_{i}_label{digits.target[i]}.png')


def test_predict_folder_writes_top5_csv(trained_run, tmp_path):
    images = tmp_path / 'images'
    _write_digit_pngs(images / 'sub')
    (images / 'broken.png').write_bytes(b'not an image at all')
    out = tmp_path / 'pred.csv'
    run_cli([
        'predict', '-c', DEMO, *QUIET, *logger_args(tmp_path / 'logs', 'predict'),
        '--ckpt_path', str(trained_run['last']), '--data.init_args.predict_dir', str(images),
        '--predictions.output_file', str(out),
    ])
    with open(out, newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6  # the corrupt file is skipped, not a crash
    assert list(rows[0]) == ['image'] + [c for i in range(1, 6) for c in (f'label{i}', f'prob{i}')]
    for row in rows:
        assert row['image'].endswith('.png') and 'broken' not in row['image']
        probs = [float(row[f'prob{i}']) for i in range(1, 6)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
        labels = [row[f'label{i}'] for i in range(1, 6)]
        assert len(set(labels)) == 5 and set(labels) <= {str(d) for d in range(10)}


def test_predict_matches_module(trained_run, tmp_path):
    """Without predict_dir the digits module predicts its validation split; the CSV agrees with the module."""
    out = tmp_path / 'val_pred.csv'
    run_cli([
        'predict', '-c', DEMO, *QUIET, *logger_args(tmp_path / 'logs', 'predict'),
        '--ckpt_path', str(trained_run['last']), '--predictions.output_file', str(out),
    ])
    with open(out, newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 360 and rows[0]['image'] == 'digits/val/0'
    dm = trained_run['cli'].datamodule
    x = torch.stack([dm._val[i][0] for i in range(4)])
    with torch.no_grad():
        probs = trained_run['cli'].model.eval()(x).softmax(-1)
    for i in range(4):
        assert rows[i]['label1'] == str(int(probs[i].argmax()))
        assert abs(float(rows[i]['prob1']) - float(probs[i].max())) < 1e-5


# misconfiguration: each must fail with a clear message before training starts

def test_unknown_model_name_suggests_close_names(tmp_path):
    with pytest.raises(ConfigError, match=r"nat_tinny.*Close names: .*nat_tiny"):
        run_cli(['fit', '-c', DEMO, *QUIET, *logger_args(tmp_path, 'x'), '--model.model_name', 'nat_tinny'])


def test_unknown_model_name_exits_2_without_traceback(tmp_path):
    proc = run_train_py(['fit', '-c', DEMO, '--model.model_name', 'dinat_minni'], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, explain(proc)
    assert 'error: model_name=' in proc.stderr and 'dinat_mini' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_odd_batch_with_mixup(tmp_path):
    with pytest.raises(ConfigError, match=r'batch_size=15 is odd.*Mixup'):
        run_cli(['fit', '-c', DEMO, *QUIET, *logger_args(tmp_path, 'x'), '--model.mixup', '0.8',
                 '--data.init_args.batch_size', '15', '--trainer.max_steps', '1'])


def test_data_argument_refused_by_name(tmp_path):
    """jsonargparse reports a data module's refusal as "Does not validate against any of the Union subtypes": the
    CLI names the argument instead (and exits 2 from the command line)."""
    with pytest.raises(ConfigError, match=r'max_shift must be a number in \[0, 0.5\], got max_shift=2.0'):
        run_cli(['fit', '-c', DEMO, *QUIET, *logger_args(tmp_path, 'x'), '--data.init_args.max_shift', '2'])


def test_min_lr_above_lr_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r'min_lr=0.01 is above the learning rate 0.002'):
        run_cli(['fit', '-c', DEMO, *QUIET, *logger_args(tmp_path, 'x'), '--model.min_lr', '0.01',
                 '--trainer.max_steps', '1'])


def _image_folder(root: Path, classes, per_class: int = 2, size: int = 40):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f'{i}.png')
    return root


IMAGE_FOLDER = ['--data.class_path', 'zoo.train.data.ImageFolderDataModule', '--data.init_args.img_size', '32',
                '--data.init_args.num_workers', '0', '--data.init_args.pin_memory', 'false',
                '--data.init_args.auto_augment', 'null']


def test_class_count_mismatch_between_checkpoint_and_data(trained_run, tmp_path):
    root = _image_folder(tmp_path / 'data', ['a', 'b', 'c'])
    with pytest.raises(ConfigError, match=r'num_classes=10.*num_classes=3'):
        run_cli(['validate', '-c', DEMO, *QUIET, *logger_args(tmp_path / 'logs', 'x'), *IMAGE_FOLDER,
                 '--data.init_args.root', str(root), '--ckpt_path', str(trained_run['last'])])


def test_missing_or_empty_image_folder(tmp_path):
    with pytest.raises(ConfigError, match=r'does not exist'):
        run_cli(['fit', '-c', DEMO, *QUIET, *logger_args(tmp_path / 'logs', 'x'), *IMAGE_FOLDER,
                 '--data.init_args.root', str(tmp_path / 'nowhere')])
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    with pytest.raises(ConfigError, match=r'no class sub-folders'):
        run_cli(['fit', '-c', DEMO, *QUIET, *logger_args(tmp_path / 'logs', 'x'), *IMAGE_FOLDER,
                 '--data.init_args.root', str(tmp_path / 'empty')])
    for split in ('train', 'val'):
        for name in ('cat', 'dog'):
            (tmp_path / 'noimg' / split / name).mkdir(parents=True)
    with pytest.raises(ConfigError, match=r'holds no images'):
        run_cli(['fit', '-c', DEMO, *QUIET, *logger_args(tmp_path / 'logs', 'x'), *IMAGE_FOLDER,
                 '--data.init_args.root', str(tmp_path / 'noimg')])


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    root = _image_folder(tmp_path / 'data', ['a', 'b'], per_class=5)
    (root / 'train' / 'a' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    (root / 'train' / 'b' / 'empty.jpg').write_bytes(b'')
    (root / 'val' / 'b' / 'bad.jpg').write_bytes(b'GIF89a nonsense')
    cli = run_cli(['fit', '-c', DEMO, *QUIET, *logger_args(tmp_path / 'logs', 'x'), *IMAGE_FOLDER,
                   '--data.init_args.root', str(root), '--data.init_args.batch_size', '6', '--model.mixup', '0.8',
                   '--trainer.max_epochs', '1', '--trainer.num_sanity_val_steps', '0'])
    rows = _metrics(Path(cli.trainer.log_dir))
    train_skipped = [float(r['train_skipped']) for r in rows if r.get('train_skipped')]
    val_skipped = [float(r['val_skipped']) for r in rows if r.get('val_skipped')]
    # 12 training files in 2 full batches of 6 (every file read once; an odd remainder is trimmed for Mixup);
    # 11 validation files in batches of 6
    assert train_skipped == [2.0]
    assert val_skipped == [1.0]


def test_reused_log_dir_is_a_clear_error(trained_run):
    with pytest.raises(ConfigError, match=r'already holds the config.yaml'):
        run_cli(['fit', '-c', DEMO, *QUIET, *logger_args(trained_run['root'] / 'logs', 'base', 'v0'),
                 '--trainer.max_steps', '1'])


def test_resume_last_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r'no last.ckpt'):
        run_cli(['fit', '-c', DEMO, *QUIET, *logger_args(tmp_path / 'logs', 'fresh'), '--ckpt_path', 'last'])


@pytest.mark.parametrize('subcommand', ['fit', 'validate', 'test', 'predict'])
def test_bad_ckpt_path_is_named_before_the_run(tmp_path, subcommand):
    """LightningCLI reads ``ckpt_path`` before any hook: a missing file was a ``FileNotFoundError`` (fit), a corrupt
    one a ``KeyError`` from torch's legacy reader, a weights file a weights-only refusal."""
    from safetensors.torch import save_file
    junk, weights = tmp_path / 'junk.ckpt', tmp_path / 'weights.safetensors'
    junk.write_text('junk\n')
    save_file({'w': torch.zeros(2)}, str(weights))
    for path, match in [(tmp_path / 'missing.ckpt', r"--ckpt_path: no such file '.*missing.ckpt'"),
                        (junk, r"--ckpt_path: '.*junk.ckpt' is not a readable checkpoint \(truncated or corrupt\?\)"),
                        (weights, r'--ckpt_path: .* is not a training checkpoint of zoo.train.ClassifierModule')]:
        with pytest.raises(ConfigError, match=match):
            run_cli([subcommand, '-c', DEMO, *QUIET, *logger_args(tmp_path / 'logs', subcommand),
                     '--ckpt_path', str(path)])


@pytest.mark.slow
def test_demo_reaches_95_percent(tmp_path):
    """The README's first command: >= 95% validation accuracy (the demo's target, on 2 CPU cores in < 5 min)."""
    start = time.monotonic()
    proc = run_train_py(['fit', '-c', DEMO, *logger_args(tmp_path / 'logs', 'demo'),
                         '--trainer.enable_progress_bar', 'false'], cwd=tmp_path, timeout=600)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, explain(proc)
    rows = _metrics(tmp_path / 'logs' / 'demo' / 'version_0')
    accs = [float(r['val_acc']) for r in rows if r.get('val_acc')]
    print(f'demo: final val_acc {accs[-1]:.4f}, best {max(accs):.4f}, {len(accs)} epochs, {elapsed:.0f} s')
    assert accs[-1] >= 0.95, accs
