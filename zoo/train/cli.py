"""``ZooCLI``: Lightning's CLI for :class:`ClassifierModule` with the zoo's defaults.

``python train.py {fit,validate,test,predict} -c configs/demo.yaml [--section.key value ...]``, or ``zoo-train ...``
(the same CLI, installed as a console command). Several ``-c`` files merge left to right (a recipe, then overlays
such as ``configs/ddp_cpu.yaml``). A ``-c`` path that does not exist but names one of the configs shipped with the
package (``configs/demo.yaml``, ``demo.yaml`` or ``demo``) takes the shipped file, so the demo runs from an
installed wheel without the repository.

What it adds to ``LightningCLI``:

* links ``data.num_classes``, ``data.label_names``, ``data.data_config`` and ``data.batch_size``-independent
  ``data.img_size`` (through ``data_config``) into the model's arguments, so they are given once;
* defaults: ``CSVLogger(save_dir='logs', name='zoo')`` (offline; a new ``version_N`` each run), two
  ``ModelCheckpoint``s in ``<log_dir>/checkpoints``: the best ``val_acc`` (``--checkpoint.*``) and ``last.ckpt``
  rewritten at every validation (``--last_checkpoint.*``; add ``--last_checkpoint.every_n_train_steps N`` for
  mid-epoch saves), a ``LearningRateMonitor`` (``--lr_monitor.*``), :class:`TrainingCurves` (``curves.png`` after
  ``fit``) and :class:`PredictionCSVWriter` (``--predictions.output_file``);
* ``fit --ckpt_path last`` resumes the newest ``last.ckpt`` of this logger name (every run logs to a new
  version folder, so Lightning's own ``'last'`` lookup would find nothing);
* resuming (``--ckpt_path``) reads the checkpoint with ``torch.load(weights_only=True)`` unless
  ``--weights_only false``;
* clear errors before training: an unknown model name (with close matches), an odd batch with Mixup,
  a checkpoint whose class count differs from the data, a reused log folder, missing data folders.
"""
import glob
import importlib.util
import os
import sys
from typing import Dict, List, Optional, Sequence

from jsonargparse import lazy_instance
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from .callbacks import PredictionCSVWriter, TrainingCurves, ZooSaveConfigCallback
from .errors import ConfigError
from .module import ClassifierModule, check_model_name

__all__ = ['ZooCLI', 'main', 'console_main', 'find_last_checkpoint', 'packaged_configs', 'resolve_config_args']

_CONFIG_FLAGS = ('-c', '--config')


def packaged_configs() -> Dict[str, str]:
    """The configs shipped with the package (the repository's ``configs/``, installed as ``zoo.configs``).

    Returns: config name (file stem) -> path.
    """
    spec = importlib.util.find_spec('zoo.configs')
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return {os.path.splitext(f)[0]: os.path.join(folder, f)
            for folder in folders for f in sorted(os.listdir(folder)) if f.endswith('.yaml')}


def _packaged_path(value: str) -> str:
    """``value`` itself when it is an existing file, else the shipped config it names (by file name or stem)."""
    if os.path.exists(value):
        return value
    name = os.path.splitext(os.path.basename(value))[0]
    return packaged_configs().get(name, value)


def resolve_config_args(args: Sequence[str]) -> List[str]:
    """``args`` with each ``-c``/``--config`` value that is not a file replaced by the shipped config of that name."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg in _CONFIG_FLAGS and i + 1 < len(out):
            out[i + 1] = _packaged_path(out[i + 1])
        elif arg.startswith('--config='):
            out[i] = '--config=' + _packaged_path(arg[len('--config='):])
    return out


def find_last_checkpoint(log_root: str, dirpath: Optional[str] = None) -> Optional[str]:
    """The most recently written ``last*.ckpt`` in ``dirpath`` or in ``<log_root>/version_*/checkpoints``."""
    patterns = [os.path.join(dirpath, 'last*.ckpt')] if dirpath else []
    patterns.append(os.path.join(log_root, '*', 'checkpoints', 'last*.ckpt'))
    patterns.append(os.path.join(log_root, 'checkpoints', 'last*.ckpt'))  # no logger: default_root_dir/checkpoints
    found = [p for pattern in patterns for p in glob.glob(pattern)]
    return max(found, key=os.path.getmtime) if found else None


# ckpt_path values that Lightning resolves itself
_LIGHTNING_CKPT_NAMES = ('best', 'last', 'hpc')


def check_ckpt_path(config) -> None:
    """The subcommand's ``ckpt_path`` is a training checkpoint of :class:`ClassifierModule`, read safely before the
    run starts (Lightning's own load fails deep in ``torch.load`` on a missing, corrupt or foreign file: a
    ``FileNotFoundError``, a ``KeyError`` of the legacy pickle reader, or a weights-only refusal of a safetensors
    file). With ``--weights_only false`` (a trusted file that needs more than tensors) only its existence is checked.

    Raises:
        ConfigError: naming the path and what is wrong with it.
    """
    path = config.get('ckpt_path')
    if not path or path in _LIGHTNING_CKPT_NAMES or str(path).startswith('registry'):
        return
    if not os.path.isfile(path):
        raise ConfigError(f'--ckpt_path: no such file {path!r}.')
    if config.get('weights_only') is False:
        return
    from zoo.weights.export import load_training_checkpoint
    try:
        load_training_checkpoint(path)
    except ValueError as e:
        raise ConfigError(f"--ckpt_path: {str(e).removeprefix('ckpt: ')}") from None


class ZooCLI(LightningCLI):
    """LightningCLI for :class:`~zoo.train.module.ClassifierModule` and any LightningDataModule (digits by default)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('save_config_callback', ZooSaveConfigCallback)
        kwargs.setdefault('seed_everything_default', 0)
        kwargs.setdefault('trainer_defaults', {
            'logger': lazy_instance(CSVLogger, save_dir='logs', name='zoo'),
            'log_every_n_steps': 10,
        })
        kwargs.setdefault('subclass_mode_data', True)
        kwargs.setdefault('auto_configure_optimizers', False)
        super().__init__(ClassifierModule, LightningDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({'data': {'class_path': 'zoo.train.data.DigitsDataModule'}})
        parser.link_arguments('data.num_classes', 'model.num_classes', apply_on='instantiate')
        parser.link_arguments('data.label_names', 'model.label_names', apply_on='instantiate')
        parser.link_arguments('data.data_config', 'model.data_config', apply_on='instantiate')
        parser.link_arguments('data.data_config', 'model.img_size', apply_on='instantiate',
                              compute_fn=lambda cfg: int(cfg['input_size'][-1]))

        # two checkpoints: Lightning 2.6 refreshes a ModelCheckpoint's last.ckpt only when it also saved a new
        # best, so `last` would go stale after the best epoch; a monitor-less one rewrites last.ckpt every time
        parser.add_lightning_class_args(ModelCheckpoint, 'checkpoint')
        parser.set_defaults({
            'checkpoint.monitor': 'val_acc',
            'checkpoint.mode': 'max',
            'checkpoint.save_top_k': 1,
            'checkpoint.filename': 'best-epoch{epoch:03d}-acc{val_acc:.4f}',
            'checkpoint.auto_insert_metric_name': False,
        })
        parser.add_lightning_class_args(ModelCheckpoint, 'last_checkpoint')
        parser.set_defaults({
            'last_checkpoint.filename': 'last',
            'last_checkpoint.save_top_k': 1,
            'last_checkpoint.enable_version_counter': False,
        })
        parser.add_lightning_class_args(LearningRateMonitor, 'lr_monitor')
        parser.set_defaults({'lr_monitor.logging_interval': 'step'})
        parser.add_lightning_class_args(TrainingCurves, 'curves')
        parser.add_lightning_class_args(PredictionCSVWriter, 'predictions')

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_model_name(config.model.model_name)

    def before_fit(self) -> None:
        config = self.config_init['fit']
        resolved_last = config.get('ckpt_path') == 'last'
        if resolved_last:
            config['ckpt_path'] = self._resolve_last()
        if config.get('ckpt_path') and config.get('weights_only') is None:
            # resume reads the checkpoint with torch.load(weights_only=True): a checkpoint carrying code is refused
            # (Lightning's default, None, unpickles anything); --weights_only false opts out for a trusted file
            config['weights_only'] = True
        if resolved_last:  # any other path was checked before the run (_parse_ckpt_path)
            check_ckpt_path(config)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyper-parameters here, before any subcommand hook: check it first
        if self.config.get('subcommand'):
            check_ckpt_path(self.config[self.config.subcommand])
        super()._parse_ckpt_path()

    def _resolve_last(self) -> str:
        logger = self.trainer.logger
        root = getattr(logger, 'root_dir', None) or self.trainer.default_root_dir
        dirpath = getattr(self.config_init['fit'].get('last_checkpoint'), 'dirpath', None)
        path = find_last_checkpoint(root, dirpath)
        if path is None:
            where = f'{dirpath} or ' if dirpath else ''
            raise ConfigError(
                f'--ckpt_path last: no last.ckpt in {where}{os.path.join(root, "version_*", "checkpoints")}. '
                f'Start the run without --ckpt_path, or give the checkpoint file.')
        if self.trainer.is_global_zero:
            print(f'Resuming from {path}', file=sys.stderr)
        return path


def main(args: Optional[List[str]] = None) -> Optional[ZooCLI]:
    """Entry point of ``train.py`` and ``zoo-train``: misconfiguration (:class:`ConfigError`) exits with its message
    and status 2."""
    try:
        return ZooCLI(args=resolve_config_args(sys.argv[1:] if args is None else args))
    except ValueError as e:
        error = _config_error_in(e)
        if error is None:
            raise
        print(f'{os.path.basename(sys.argv[0]) or "train.py"}: error: {error}', file=sys.stderr)
        if args is not None:  # called from Python: let the caller see the exception
            raise error from None
        sys.exit(2)


def _config_error_in(e: BaseException) -> Optional[ConfigError]:
    """``e`` or the :class:`ConfigError` it was raised from: jsonargparse reports a data module whose constructor
    refused an argument as "Does not validate against any of the Union subtypes", chained to the refusal."""
    seen = 0
    while e is not None and seen < 16:
        if isinstance(e, ConfigError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def console_main() -> None:
    """Entry point of the ``zoo-train`` console command: :func:`main` on ``sys.argv`` (exit status 0 on success)."""
    main()
