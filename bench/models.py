"""Model throughput and peak memory: zoo models against timm's Swin-T and ConvNeXt-T, measured in the same run.

    python -m bench.models [--device cpu|cuda] [--models nat_mini dinat_mini ...] [--batch 8] [--img-size 224]
                           [--modes inference training] [--isolate] [--amp none|bf16|fp16]
                           [--compile none|default|reduce-overhead|max-autotune] [--officials --official-root DIR]
                           [--optimizer fused|default]

Two modes, each at batch 1 and at the throughput batch: ``inference`` (eval, ``no_grad`` forward) and ``training``
(one optimizer step: train-mode forward, cross-entropy, backward, ``torch.optim.AdamW`` step, fused as the training
CLI builds it unless ``--optimizer default``; every model built with the same ``--drop-path`` rate). For every
model the step of the model and of each peer is timed round-robin with :func:`bench.common.time_fns` (warm-up,
synchronisation, median), so a shared machine slowing down mid-run affects all of them alike. Printed as one
markdown table per mode: images/s, the speed ratio to each peer (ours img/s / peer img/s: above 1 means ours is
faster), and peak memory with its ratio (ours / peer: below 1 means ours uses less). ``--amp`` runs the forward and
the loss under autocast (mixed precision, as on a GPU); ``--officials`` adds the official twin of each model that
has one (:func:`bench.official.twin`) and a "vs official" column.
``--compile`` wraps every model (ours, peers, officials alike) in ``torch.compile`` with that mode (``default``:
inductor; ``reduce-overhead``: plus CUDA graphs, which take the host's per-op dispatch out of a GPU step, the bound of
eager steps at batch 64 on an H200, BENCHMARKS.md); the compilation happens in the warm-up calls, outside the timing.
``--isolate`` runs each model with the peers in a fresh process (the peers are then timed once per
model): with many models training in one process, the allocator state of that process slows the models with the
largest activations (BENCHMARKS.md, session 7).

Peak memory: on CUDA, the peak allocated by one step above what was allocated before it
(:func:`bench.common.peak_memory`). On CPU, the growth of the process's peak resident set over one step in a fresh
subprocess (``VmHWM`` after the step minus ``VmRSS`` before it, the high-water mark reset through
``/proc/self/clear_refs`` first; Linux): the first forward in inference, the second step in training (after the
first has allocated AdamW's state), with glibc's mmap threshold fixed at 64 KiB so that every large buffer is
mapped and unmapped. Activations, gradients and workspace, not the weights or the optimizer state; coarse (a few MB).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from zoo.models import create_model

from . import official
from .common import fmt_ratio, machine, markdown_table, peak_memory, time_fns

PEERS = ('swin_tiny_patch4_window7_224', 'convnext_tiny')
PEER_SHORT = {'swin_tiny_patch4_window7_224': 'swin_t', 'convnext_tiny': 'convnext_t'}


COMPILE_MODES = ('none', 'default', 'reduce-overhead', 'max-autotune')


def build_model(name: str, device: str, img_size: int, mode: str = 'inference', drop_path: float = 0.1,
                compile_mode: str = 'none') -> torch.nn.Module:
    """Model ``name`` (a zoo or timm name, or an ``official:`` twin) on ``device`` for ``img_size`` inputs, in eval
    mode for ``'inference'`` and in train mode with ``drop_path`` stochastic depth for ``'training'``, wrapped in
    ``torch.compile`` unless ``compile_mode`` is ``'none'``."""
    kwargs = {'drop_path_rate': drop_path} if mode == 'training' else {}
    if official.is_official(name):
        model = official.build(name, **kwargs).to(device)
    else:
        model = create_model(name, input_size=img_size, **kwargs).to(device)
    model = model.train() if mode == 'training' else model.eval()
    if compile_mode != 'none':
        model = torch.compile(model, mode=None if compile_mode == 'default' else compile_mode)
    return model


AMP_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
# the training step's AdamW: torch's fused kernel (what the training CLI picks on CPUs and GPUs, zoo.train.module) or
# torch's default implementation (a loop over the tensors on the CPU, multi-tensor kernels on a GPU)
OPTIMIZERS = ('fused', 'default')


def _autocast(device: str, amp: str):
    """``torch.autocast`` to the ``amp`` dtype on ``device``'s type, or a disabled one for ``'none'``."""
    dtype = AMP_DTYPES[amp]
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def step_fn(model: torch.nn.Module, x: torch.Tensor, mode: str, amp: str = 'none',
            optimizer: str = 'fused') -> Callable[[], None]:
    """One inference forward, or one training step (forward, cross-entropy, backward, AdamW step).

    ``amp``: the forward (and the loss) under autocast to bf16 or fp16, as mixed-precision training runs it; fp16
    scales the loss by a ``torch.amp.GradScaler``. ``optimizer``: one of :data:`OPTIMIZERS`.
    """
    if mode == 'inference':
        def forward():
            with torch.no_grad(), _autocast(x.device.type, amp):
                model(x)
        return forward
    if optimizer not in OPTIMIZERS:
        raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got optimizer={optimizer!r}')
    fused = {'fused': True} if optimizer == 'fused' else {}
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, **fused)
    target = torch.arange(x.shape[0], device=x.device) % getattr(model, 'num_classes', 1000)
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp == 'fp16')

    def train_step():
        adamw.zero_grad(set_to_none=True)
        with _autocast(x.device.type, amp):
            loss = F.cross_entropy(model(x), target)
        scaler.scale(loss).backward()
        scaler.step(adamw)
        scaler.update()
    return train_step


def _proc_status_bytes(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'{field} not found in /proc/self/status')


def _cpu_peak_child(name: str, batch: int, img_size: int, threads: int, mode: str, drop_path: float,
                    amp: str = 'none', compile_mode: str = 'none', optimizer: str = 'fused') -> None:
    torch.set_num_threads(threads)
    model = build_model(name, 'cpu', img_size, mode, drop_path, compile_mode)
    step = step_fn(model, torch.randn(batch, 3, img_size, img_size), mode, amp, optimizer)
    if mode == 'training' or compile_mode != 'none':
        step()  # allocates the optimizer state (and compiles): the measured step is a steady one
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak resident set (VmHWM) to the current one
    before = _proc_status_bytes('VmRSS')
    step()
    print(json.dumps({'peak': max(0, _proc_status_bytes('VmHWM') - before)}))


def cpu_peak_memory(name: str, batch: int, img_size: int, mode: str = 'inference',
                    drop_path: float = 0.1, amp: str = 'none', compile_mode: str = 'none',
                    optimizer: str = 'fused') -> Optional[int]:
    """Peak resident-set growth in bytes of one step of ``name`` in a fresh process (None if it failed)."""
    cmd = [sys.executable, '-m', 'bench.models', '--_peak-child', name, '--batch', str(batch),
           '--img-size', str(img_size), '--threads', str(torch.get_num_threads()), '--modes', mode,
           '--drop-path', str(drop_path), '--amp', amp, '--compile', compile_mode, '--optimizer', optimizer]
    # a fixed mmap threshold: glibc's adaptive one would serve the second step from heap memory the first one freed,
    # which the resident-set high-water mark does not see again
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                            env=env)
    if result.returncode != 0:
        print(f'peak memory of {name} failed: {result.stderr.strip().splitlines()[-1:]}', file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])['peak']


def measure(names: List[str], batch: int, img_size: int, device: str, repeats: int, budget_s: float,
            memory: bool, mode: str = 'inference', drop_path: float = 0.1,
            stat: str = 'median', warmup: int = 2, amp: str = 'none', compile_mode: str = 'none',
            optimizer: str = 'fused') -> Dict[str, Dict[str, Optional[float]]]:
    """Images/s and peak memory (bytes) of one ``mode`` step of each model at ``batch``, timed round-robin."""
    models = {n: build_model(n, device, img_size, mode, drop_path, compile_mode) for n in names}
    if compile_mode != 'none':
        warmup = max(warmup, 3)  # the first call compiles; CUDA graphs are recorded after a warm-up run
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    steps = {n: step_fn(m, x, mode, amp, optimizer) for n, m in models.items()}
    times = time_fns(steps, device, warmup=warmup, repeats=repeats, budget_s=budget_s, stat=stat)
    out = {}
    for name, model in models.items():
        if not memory:
            peak = None
        elif torch.device(device).type == 'cuda':
            peak = peak_memory(steps[name], device)
        else:
            peak = cpu_peak_memory(name, batch, img_size, mode, drop_path, amp, compile_mode, optimizer)
        out[name] = {'img_s': batch / times[name], 'peak': peak,
                     'params': sum(p.numel() for p in model.parameters())}
    del models, steps
    return out


def _mb(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value / 2 ** 20:.0f}'


MODE_TITLE = {
    'inference': 'inference (eval forward, no_grad)',
    'training': 'training step (train-mode forward, cross-entropy, backward, {optimizer} AdamW step; drop_path '
                '{drop_path:g})',
}


def _child_args(args: argparse.Namespace, model: str) -> List[str]:
    """The command line of one ``--isolate`` group: ``model`` and the peers, every other option as given."""
    out = ['--device', args.device, '--models', model, '--peers', *args.peers, '--modes', *args.modes,
           '--img-size', str(args.img_size), '--drop-path', str(args.drop_path), '--repeats', str(args.repeats),
           '--budget', str(args.budget), '--stat', args.stat, '--amp', args.amp, '--compile', args.compile,
           '--optimizer', args.optimizer]
    out += ['--batch', str(args.batch)] if args.batch else []
    out += ['--threads', str(args.threads)] if args.threads else []
    out += ['--no-memory'] if args.no_memory else []
    out += ['--officials'] if args.officials else []
    out += ['--official-root', args.official_root] if args.official_root else []
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--models', nargs='+', default=['nat_mini', 'dinat_mini', 'nat_tiny', 'dinat_tiny',
                                                        'biformer_tiny', 'maxvit_zoo_tiny_224', 'litv2_small',
                                                        'ravlt_small',
                                                        'flowformer_cv', 'inline_swin_tiny', 'agent_swin_tiny',
                                                        'agent_pvt_small', 'agent_deit_tiny'])
    parser.add_argument('--peers', nargs='+', default=list(PEERS))
    parser.add_argument('--modes', nargs='+', default=['inference', 'training'], choices=tuple(MODE_TITLE))
    parser.add_argument('--batch', type=int, default=None, help='throughput batch (default 8 on CPU, 64 on CUDA)')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--drop-path', type=float, default=0.1, help='drop_path_rate of every model in training')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--budget', type=float, default=20.0, help='seconds of timed calls for the slowest model')
    parser.add_argument('--stat', default='median', choices=('median', 'min'))
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch default)')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    parser.add_argument('--official-root', default=None,
                        help='directory of official checkouts for official:<family>/<model> peers (bench.official)')
    parser.add_argument('--isolate', action='store_true',
                        help='time each model with the peers in a fresh process of its own (one set of tables per '
                             'model): with many models alive in one process, training-step timings depend on that '
                             "process's allocator state")
    parser.add_argument('--amp', default='none', choices=tuple(AMP_DTYPES),
                        help='autocast dtype of the forward and the loss (mixed precision); none: fp32')
    parser.add_argument('--compile', default='none', choices=COMPILE_MODES,
                        help='torch.compile every model with this mode (default: eager)')
    parser.add_argument('--optimizer', default='fused', choices=OPTIMIZERS,
                        help="the training step's AdamW: torch's fused kernel (as the training CLI) or torch's default")
    parser.add_argument('--officials', action='store_true',
                        help='add the official twin of each model that has one (bench/official_<family>.py) and a '
                             '"vs official" column; needs --official-root')
    parser.add_argument('--_peak-child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.isolate:
        for model in args.models:
            subprocess.run([sys.executable, '-m', 'bench.models', *_child_args(args, model)], check=True)
        return
    if args.official_root:
        os.environ[official.ROOT_ENV] = args.official_root
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._peak_child:
        _cpu_peak_child(args._peak_child, args.batch, args.img_size, torch.get_num_threads(), args.modes[0],
                        args.drop_path, args.amp, args.compile, args.optimizer)
        return
    batches = [1, args.batch or (8 if args.device == 'cpu' else 64)]
    twins = {m: official.twin(m) for m in args.models} if args.officials else {}
    twins = {m: t for m, t in twins.items() if t}
    names = list(dict.fromkeys(args.models + list(twins.values()) + args.peers))
    precision = 'fp32' if args.amp == 'none' else f'{args.amp} autocast'
    precision += '' if args.compile == 'none' else f'; torch.compile mode {args.compile}'
    print(f'# bench.models: {machine(args.device)}; {args.img_size}px {precision}; NA backend '
          f'{os.environ.get("ZOO_NA_BACKEND") or "auto"}; {args.stat} of up to {args.repeats} round-robin repeats')
    columns = list(args.peers) + (['official'] if args.officials else [])
    short = {**PEER_SHORT, 'official': 'official'}
    headers = ['model', 'params (M)', 'batch', 'img/s']
    headers += [f'speed vs {short.get(p, p)}' for p in columns]
    headers += ['peak mem (MB)'] + [f'mem vs {short.get(p, p)}' for p in columns]
    for mode in args.modes:
        rows = []
        for batch in batches:
            results = measure(names, batch, args.img_size, args.device, args.repeats, args.budget,
                              not args.no_memory, mode, args.drop_path, args.stat, amp=args.amp,
                              compile_mode=args.compile, optimizer=args.optimizer)
            for name in names:
                r = results[name]
                peers = [p if p != 'official' else twins.get(name) for p in columns]
                row = [name, f'{r["params"] / 1e6:.1f}', batch, f'{r["img_s"]:.3g}']
                row += [fmt_ratio(r['img_s'], results[p]['img_s']) if p else '-' for p in peers]
                row += [_mb(r['peak'])]
                row += [fmt_ratio(r['peak'], results[p]['peak']) if p and r['peak'] and results[p]['peak'] else 'n/a'
                        for p in peers]
                rows.append(row)
        print(f'\n## {MODE_TITLE[mode].format(drop_path=args.drop_path, optimizer=args.optimizer)}\n')
        print(markdown_table(headers, rows), flush=True)


if __name__ == '__main__':
    main()
