"""Model throughput and peak memory: zoo models against timm's Swin-T and ConvNeXt-T, measured in the same run.

    python -m bench.models [--device cpu|cuda] [--models nat_mini dinat_mini ...] [--batch 8] [--img-size 224]

For every model and each of batch 1 and the throughput batch, the inference forward (eval, ``no_grad``) of the
model and of each peer is timed round-robin with :func:`bench.common.time_fns` (warm-up, synchronisation, median),
so a shared machine slowing down mid-run affects all of them alike. Printed as a markdown table: images/s, the
speed ratio to each peer (ours img/s / peer img/s: above 1 means ours is faster), and peak memory with its ratio
(ours / peer: below 1 means ours uses less).

Peak memory: on CUDA, the peak allocated by the forward above what was allocated before it
(:func:`bench.common.peak_memory`). On CPU, the growth of the process's peak resident set over the first forward
in a fresh subprocess (``VmHWM`` after the forward minus ``VmRSS`` before it, the high-water mark reset through
``/proc/self/clear_refs`` first; Linux): activations and workspace, not the weights; coarse (allocator granularity,
a few MB).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional

import torch

from .common import fmt_ratio, machine, markdown_table, peak_memory, time_fns

PEERS = ('swin_tiny_patch4_window7_224', 'convnext_tiny')
PEER_SHORT = {'swin_tiny_patch4_window7_224': 'swin_t', 'convnext_tiny': 'convnext_t'}


def _build(name: str, device: str, img_size: int) -> torch.nn.Module:
    import timm
    import zoo  # noqa: F401  (registers the zoo models)
    kwargs = {}
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        kwargs['img_size'] = img_size
    return timm.create_model(name, **kwargs).to(device).eval()


def _proc_status_bytes(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'{field} not found in /proc/self/status')


def _cpu_peak_child(name: str, batch: int, img_size: int, threads: int) -> None:
    torch.set_num_threads(threads)
    model = _build(name, 'cpu', img_size)
    x = torch.randn(batch, 3, img_size, img_size)
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak resident set (VmHWM) to the current one
    before = _proc_status_bytes('VmRSS')
    with torch.no_grad():
        model(x)
    print(json.dumps({'peak': max(0, _proc_status_bytes('VmHWM') - before)}))


def cpu_peak_memory(name: str, batch: int, img_size: int) -> Optional[int]:
    """Peak resident-set growth in bytes of the first forward of ``name`` in a fresh process (None if it failed)."""
    cmd = [sys.executable, '-m', 'bench.models', '--_peak-child', name, '--batch', str(batch),
           '--img-size', str(img_size), '--threads', str(torch.get_num_threads())]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    if result.returncode != 0:
        print(f'peak memory of {name} failed: {result.stderr.strip().splitlines()[-1:]}', file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])['peak']


def measure(names: List[str], batch: int, img_size: int, device: str, repeats: int, budget_s: float,
            memory: bool) -> Dict[str, Dict[str, Optional[float]]]:
    """Images/s and peak memory (bytes) of each model at ``batch``, timed round-robin."""
    models = {n: _build(n, device, img_size) for n in names}
    x = torch.randn(batch, 3, img_size, img_size, device=device)

    def forward(model):
        def run():
            with torch.no_grad():
                model(x)
        return run

    times = time_fns({n: forward(m) for n, m in models.items()}, device, warmup=2, repeats=repeats,
                     budget_s=budget_s)
    out = {}
    for name, model in models.items():
        if not memory:
            peak = None
        elif torch.device(device).type == 'cuda':
            peak = peak_memory(forward(model), device)
        else:
            peak = cpu_peak_memory(name, batch, img_size)
        out[name] = {'img_s': batch / times[name], 'peak': peak,
                     'params': sum(p.numel() for p in model.parameters())}
    del models
    return out


def _mb(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value / 2 ** 20:.0f}'


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--models', nargs='+', default=['nat_mini', 'dinat_mini', 'biformer_tiny'])
    parser.add_argument('--peers', nargs='+', default=list(PEERS))
    parser.add_argument('--batch', type=int, default=None, help='throughput batch (default 8 on CPU, 64 on CUDA)')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--budget', type=float, default=20.0, help='seconds of timed calls for the slowest model')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch default)')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    parser.add_argument('--_peak-child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._peak_child:
        _cpu_peak_child(args._peak_child, args.batch, args.img_size, torch.get_num_threads())
        return
    batches = [1, args.batch or (8 if args.device == 'cpu' else 64)]
    print(f'# bench.models: {machine(args.device)}; {args.img_size}px fp32 inference; '
          f'NA backend {os.environ.get("ZOO_NA_BACKEND") or "auto"}')
    headers = ['model', 'params (M)', 'batch', 'img/s']
    headers += [f'speed vs {PEER_SHORT.get(p, p)}' for p in args.peers]
    headers += ['peak mem (MB)'] + [f'mem vs {PEER_SHORT.get(p, p)}' for p in args.peers]
    rows = []
    for batch in batches:
        results = measure(list(dict.fromkeys(args.models + args.peers)), batch, args.img_size, args.device,
                          args.repeats, args.budget, not args.no_memory)
        for name in list(dict.fromkeys(args.models + args.peers)):
            r = results[name]
            row = [name, f'{r["params"] / 1e6:.1f}', batch, f'{r["img_s"]:.3g}']
            row += [fmt_ratio(r['img_s'], results[p]['img_s']) for p in args.peers]
            row += [_mb(r['peak'])]
            row += [fmt_ratio(r['peak'], results[p]['peak']) if r['peak'] and results[p]['peak'] else 'n/a'
                    for p in args.peers]
            rows.append(row)
    print(markdown_table(headers, rows))


if __name__ == '__main__':
    main()
