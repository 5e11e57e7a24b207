"""Callbacks the CLI adds: loss/accuracy curves after ``fit``, a CSV writer for ``predict``, a safe config saver."""
import csv
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from .errors import ConfigError

__all__ = ['TrainingCurves', 'PredictionCSVWriter', 'StopAfter', 'ZooSaveConfigCallback', 'read_metrics_csv',
           'plot_curves']

_logger = logging.getLogger(__name__)


def read_metrics_csv(path: str) -> List[Dict[str, float]]:
    """Rows of a CSVLogger ``metrics.csv`` as dicts of floats (empty cells left out)."""
    rows = []
    with open(path, newline='') as f:
        for row in csv.DictReader(f):
            parsed = {}
            for k, v in row.items():
                if v not in (None, ''):
                    try:
                        parsed[k] = float(v)
                    except ValueError:
                        pass
            rows.append(parsed)
    return rows


def _series(rows: Sequence[Dict[str, float]], key: str, x: str = 'step'):
    points = [(r[x], r[key]) for r in rows if key in r and x in r and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(rows: Sequence[Dict[str, float]], out_path: str, title: str = '') -> Optional[str]:
    """Write a PNG with the losses (left) and accuracies (right) over the optimizer steps; None if nothing to plot."""
    import matplotlib
    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt

    loss_keys = [k for k in ('train_loss_step', 'train_loss_epoch', 'val_loss') if any(k in r for r in rows)]
    acc_keys = [k for k in ('val_acc', 'val_acc5') if any(k in r for r in rows)]
    if not loss_keys and not acc_keys:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {'train_loss_step': dict(alpha=0.35, lw=0.8), 'train_loss_epoch': dict(marker='.', lw=1.5),
              'val_loss': dict(marker='o', lw=1.5), 'val_acc': dict(marker='o'), 'val_acc5': dict(marker='.')}
    for key in loss_keys:
        ax_loss.plot(*_series(rows, key), label=key, **styles[key])
    for key in acc_keys:
        ax_acc.plot(*_series(rows, key), label=key, **styles[key])
    ax_loss.set(xlabel='optimizer step', ylabel='loss', title='loss')
    ax_acc.set(xlabel='optimizer step', ylabel='accuracy', title='validation accuracy')
    xs, ys = _series(rows, 'val_acc')
    if ys:
        best = max(range(len(ys)), key=ys.__getitem__)
        ax_acc.annotate(f'best {ys[best]:.4f}', (xs[best], ys[best]), textcoords='offset points', xytext=(-40, -15))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


class TrainingCurves(Callback):
    """At the end of ``fit``, plot ``metrics.csv`` of the CSVLogger to ``<log_dir>/<filename>``.

    A resumed run logs into a new version folder; the rows of the run it resumed from (the ``metrics.csv``
    next to the checkpoint's ``checkpoints/`` folder, up to the checkpoint's step) are drawn first, so the
    figure shows the whole training.

    Args:
        filename: PNG file name, written in the logger's folder.
    """

    def __init__(self, filename: str = 'curves.png'):
        self.filename = filename
        self.path: Optional[str] = None

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if logger is None:
            rank_zero_info('TrainingCurves: no CSVLogger among the loggers; no curves written.')
            return
        logger.save()
        metrics = logger.experiment.metrics_file_path
        if not os.path.isfile(metrics):
            return
        rows = read_metrics_csv(metrics)
        previous = _resumed_metrics(trainer.ckpt_path, metrics)
        if previous:
            first = min((r['step'] for r in rows if 'step' in r), default=math.inf)
            rows = [r for r in previous if r.get('step', math.inf) < first] + rows
        out = os.path.join(logger.log_dir, self.filename)
        title = f'{pl_module.hparams.get("model_name", "")} ({os.path.basename(logger.log_dir)})'
        self.path = plot_curves(rows, out, title)
        if self.path:
            rank_zero_info(f'Training curves: {self.path}')


def _resumed_metrics(ckpt_path: Optional[str], current: str) -> List[Dict[str, float]]:
    if not ckpt_path or not os.path.isfile(ckpt_path):
        return []
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_path)))
    path = os.path.join(run_dir, 'metrics.csv')
    if not os.path.isfile(path) or os.path.samefile(path, current):
        return []
    return read_metrics_csv(path)


class PredictionCSVWriter(BasePredictionWriter):
    """Write ``predict`` results as CSV: ``image, label1, prob1, ..., label5, prob5`` (labels by name).

    Args:
        output_file: CSV path; None writes ``<log_dir>/predictions.csv``. With several processes each rank
            writes ``<stem>.rank<R>.csv`` (the images are split between ranks).
    """

    def __init__(self, output_file: Optional[str] = None):
        super().__init__(write_interval='batch')
        self.output_file = output_file
        self.path: Optional[str] = None
        self._rows = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != 'predict':
            return
        path = self.output_file or os.path.join(trainer.log_dir or '.', 'predictions.csv')
        if trainer.world_size > 1:
            stem, ext = os.path.splitext(path)
            path = f'{stem}.rank{trainer.global_rank}{ext or ".csv"}'
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        k = min(5, pl_module.hparams.num_classes)
        with open(path, 'w', newline='') as f:
            csv.writer(f).writerow(['image'] + [c for i in range(1, k + 1) for c in (f'label{i}', f'prob{i}')])
        self.path, self._rows = path, 0

    def write_on_batch_end(
            self, trainer: Trainer, pl_module: LightningModule, prediction: Dict[str, Any],
            batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        names = pl_module.label_names
        with open(self.path, 'a', newline='') as f:
            writer = csv.writer(f)
            for image, classes, probs in zip(prediction['ids'], prediction['classes'].tolist(),
                                             prediction['probs'].tolist()):
                writer.writerow([image] + [v for c, p in zip(classes, probs) for v in (names[c], f'{p:.6f}')])
                self._rows += 1

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.path:
            _logger.info('Wrote %d predictions to %s', self._rows, self.path)
            print(f'Wrote {self._rows} predictions to {self.path}')


class StopAfter(Callback):
    """End ``fit`` cleanly after a number of epochs or optimizer steps, keeping the ``max_epochs`` schedule.

    For time-sliced jobs (a cluster allocation shorter than the training): each job trains a slice and the next
    one continues with ``fit --ckpt_path last``; the learning-rate schedule is the one of the whole run, which
    ``--trainer.max_epochs``/``max_steps`` would change. The counts are totals of the run, not of this job.

    Args:
        epochs: stop once this many epochs are complete (at the end of an epoch, after its validation).
        steps: stop once this many optimizer steps are done (mid-epoch; pair with
            ``--last_checkpoint.every_n_train_steps`` so a checkpoint exists at that step).
    """

    def __init__(self, epochs: Optional[int] = None, steps: Optional[int] = None):
        if epochs is None and steps is None:
            raise ConfigError('StopAfter: give epochs or steps.')
        self.epochs, self.steps = epochs, steps

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.steps is not None and trainer.global_step >= self.steps:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.epochs is not None and trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class ZooSaveConfigCallback(SaveConfigCallback):
    """``SaveConfigCallback`` that explains a reused log folder instead of Lightning's generic abort.

    A fresh run needs a folder without ``config.yaml``: the default CSVLogger picks a new ``version_N`` each run,
    so this only happens with a fixed ``--trainer.logger.init_args.version`` (or no logger and a reused
    ``--trainer.default_root_dir``). A resumed ``fit --ckpt_path ...`` into such a folder keeps the first config
    and saves its own next to it as ``config.resumed-<k>.yaml``.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved or not self.save_to_log_dir or self.overwrite:
            return super().setup(trainer, pl_module, stage)
        log_dir = trainer.log_dir
        path = os.path.join(log_dir, self.config_filename)
        exists = trainer.strategy.broadcast(os.path.isfile(path) if trainer.is_global_zero else False)
        if exists:
            if stage == 'fit' and trainer.ckpt_path:
                k = 1
                while os.path.isfile(os.path.join(log_dir, f'config.resumed-{k}.yaml')):
                    k += 1
                self.config_filename = f'config.resumed-{k}.yaml'
            else:
                raise ConfigError(
                    f'The log folder {log_dir!r} already holds the config.yaml of an earlier run, and this run would '
                    f'overwrite its logs and checkpoints. Use a new folder (leave '
                    f'--trainer.logger.init_args.version unset for a fresh version_N, or change '
                    f'--trainer.logger.init_args.name / save_dir), delete the old folder, or continue that run with '
                    f'`fit --ckpt_path last`.')
        return super().setup(trainer, pl_module, stage)
