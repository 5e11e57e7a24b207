"""PNG plots of CPU throughput and peak memory against input resolution: one model per family and timm's peers.

    python -m bench.plots [--models nat_mini biformer_tiny ...] [--sizes 160 224 288] [--batch 1] [--out docs]

Each resolution is one ``bench.models.measure`` run (inference, the models and the peers timed round-robin in the
same run; peak memory: growth of the peak resident set over one forward in a fresh process). Default models: the
smallest published variant (fewest GMACs in ``bench/model_table.json``) of every family, plus Swin-T and
ConvNeXt-T. Writes ``<out>/plot_throughput_cpu.png``, ``<out>/plot_memory_cpu.png`` and the numbers as
``<out>/plots_cpu.json``; the titles name the machine (CPU model, threads, load average during the run).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Dict, List, Optional

from .models import PEERS

ROOT = Path(__file__).resolve().parents[1]


def default_models() -> List[str]:
    """The smallest published variant (GMACs of the model-table data) of each zoo family module."""
    import timm

    from .model_table import load_data
    data = load_data()['models']
    best: Dict[str, tuple] = {}
    for name, entry in data.items():
        if not timm.is_model(name):
            continue
        module = timm.models.model_entrypoint(name).__module__
        if module not in best or entry['gmacs'] < best[module][0]:
            best[module] = (entry['gmacs'], name)
    return [name for _, name in sorted(best.values(), key=lambda t: t[1])]


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(models: List[str], sizes: List[int], batch: int, repeats: int, budget: float) -> Dict:
    import torch

    from .models import measure
    results: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {}
    loads = []
    for size in sizes:
        loads.append(os.getloadavg()[0])
        out = measure(models, batch, size, 'cpu', repeats, budget, memory=True)
        for name, r in out.items():
            results.setdefault(name, {})[str(size)] = {'img_s': r['img_s'], 'peak_mb': (
                None if r['peak'] is None else r['peak'] / 2 ** 20)}
        print(f'{size}px: ' + ', '.join(f'{n} {r["img_s"]:.2f} img/s' for n, r in out.items()), flush=True)
    loads.append(os.getloadavg()[0])
    machine = (f'{_cpu_name()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, '
               f'load average {min(loads):.1f}-{max(loads):.1f}')
    return dict(machine=machine, batch=batch, sizes=sizes, results=results)


def plot(data: Dict, out_dir: Path) -> List[Path]:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    paths = []
    for key, ylabel, fname in (('img_s', 'images / s', 'plot_throughput_cpu.png'),
                               ('peak_mb', 'peak memory growth over one forward (MB)', 'plot_memory_cpu.png')):
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        for name, per_size in data['results'].items():
            xs = [int(s) for s in per_size if per_size[s][key] is not None]
            ys = [per_size[str(s)][key] for s in xs]
            if xs:
                ax.plot(xs, ys, marker='o', linestyle='--' if name in PEERS else '-', label=name)
        ax.set_xlabel('input resolution (px, square)')
        ax.set_ylabel(ylabel)
        if key == 'img_s':
            ax.set_yscale('log')
        what = 'throughput' if key == 'img_s' else 'peak memory'
        ax.set_title(f'CPU inference {what}, batch {data["batch"]} (dashed: timm peers)\n{data["machine"]}',
                     fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=None, help='default: the smallest variant of each family')
    parser.add_argument('--peers', nargs='+', default=list(PEERS))
    parser.add_argument('--sizes', nargs='+', type=int, default=[160, 224, 288])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--budget', type=float, default=3.0, help='seconds of timed calls per model and size')
    parser.add_argument('--out', default=str(ROOT / 'docs'))
    parser.add_argument('--replot', action='store_true', help='redraw from <out>/plots_cpu.json, measure nothing')
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.replot:
        with open(out_dir / 'plots_cpu.json') as f:
            data = json.load(f)
    else:
        import zoo  # noqa: F401  (registers the models)
        data = run((args.models or default_models()) + args.peers, args.sizes, args.batch, args.repeats,
                   args.budget)
        with open(out_dir / 'plots_cpu.json', 'w') as f:
            json.dump(data, f, indent=1)
            f.write('\n')
    for path in plot(data, out_dir):
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
