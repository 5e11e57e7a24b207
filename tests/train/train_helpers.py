"""Helpers for the training tests: paths, quiet Trainer arguments, in-process and subprocess ``train.py`` runs."""
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / 'configs' / 'demo.yaml')
DDP_CPU = str(REPO / 'configs' / 'ddp_cpu.yaml')
TRAIN_PY = str(REPO / 'train.py')

# quiet, quick Trainer settings for in-process and subprocess runs
QUIET = [
    '--trainer.enable_progress_bar', 'false',
    '--trainer.enable_model_summary', 'false',
    '--trainer.log_every_n_steps', '1',
]


def logger_args(save_dir, name: str = 'test', version=None) -> List[str]:
    args = ['--trainer.logger.init_args.save_dir', str(save_dir), '--trainer.logger.init_args.name', name]
    if version is not None:
        args += ['--trainer.logger.init_args.version', str(version)]
    return args


def run_cli(args: Sequence[str]):
    """Run ``train.py`` in this process; returns the ZooCLI (``.model``, ``.trainer``, ``.datamodule``)."""
    from zoo.train.cli import main
    return main(list(args))


def subprocess_env() -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
    env.pop('PL_GLOBAL_SEED', None)
    env.setdefault('HF_HUB_OFFLINE', '1')
    # one intra-op thread per process: on a shared CI machine two OpenMP threads on two busy cores stall at every
    # barrier (a 0.05 s demo step took 1-4 s); the DDP test's two processes then use the two cores
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def run_train_py(args: Sequence[str], cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python train.py ...`` in a subprocess (needed for DDP, whose launcher re-runs ``sys.argv``)."""
    proc = subprocess.run(
        [sys.executable, TRAIN_PY, *args], cwd=str(cwd), env=subprocess_env(), capture_output=True, text=True,
        timeout=timeout)
    return proc


def explain(proc: subprocess.CompletedProcess) -> str:
    return f'exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}'


