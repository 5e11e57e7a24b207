"""The README's model table, written from the registered models and a committed data file.

    python -m bench.model_table            # rewrite the table between the README's model-table markers
    python -m bench.model_table --check    # exit 1 if the README differs from what would be written
    python -m bench.model_table --measure [--models ...] [--max-gmacs 20]   # refresh CPU img/s in the data file

One row per zoo model with released ImageNet-1k weights (the set ``tests/zoo/models/test_gmacs.py`` requires):
``| `name` | params | GMACs | resolution | paper top-1 | CPU img/s |``.

* params, resolution: counted from the model (built on the meta device, nothing computed) and its pretrained cfg
  when the table is written, and stored in the data file (``--check`` and the test compare without rebuilding;
  ``tests/zoo/models/test_gmacs.py`` checks every row's params against the model).
* GMACs, paper top-1: from ``bench/model_table.json`` (GMACs measured on the official code with fvcore, the
  project's ``paper_table.csv``; ``test_gmacs.py`` checks ours within 0.1 %). A model missing from the data file
  takes the values of its hand-written README row, which are then stored in the data file.
* resolution: the pretrained cfg's input size.
* CPU img/s: ``bench.models.measure`` (inference, batch 1, the run's machine in the data file's ``cpu`` entry,
  each model's load average in its ``cpu_load``), stored by ``--measure``; ``—`` where not measured (models above
  ``--max-gmacs``). A note under the table gives the machine and the load.

The test ``tests/zoo/weights/test_model_table.py`` checks that the README equals the output of this script.
"""
from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
DATA = Path(__file__).resolve().with_name('model_table.json')
START = '<!-- model-table:start (written by python -m bench.model_table; edit bench/model_table.json) -->'
END = '<!-- model-table:end -->'
HEADER = ('| timm name | params (ours = official) | GMACs (official code; ours within 0.1%) | resolution '
          '| paper top-1 | CPU img/s (batch 1) |\n| --- | --- | --- | --- | --- | --- |')
_ROW = re.compile(r'^\| `(\w+)` \| ([\d,]+) \| ([\d.]+) \| (\d+) \| ([\d.]+|—|-)? ?\|', re.M)


def published_models() -> List[str]:
    """Zoo architectures with released ImageNet-1k weights, in family order (module, then definition order)."""
    import timm

    import zoo  # noqa: F401  (registers the models)
    out = {}
    for tagged in timm.list_models(pretrained=True):
        arch = tagged.split('.')[0]
        fn = timm.models.model_entrypoint(arch)
        if fn.__module__.startswith('zoo.') and timm.get_pretrained_cfg(tagged).num_classes == 1000:
            out[arch] = fn
    return list(out)


def _order(names: List[str], data: Dict) -> List[str]:
    import timm
    modules: List[str] = []
    for name in list(data['models']) + sorted(names):
        if name in names:
            module = timm.models.model_entrypoint(name).__module__
            if module not in modules:
                modules.append(module)

    def key(name):
        fn = timm.models.model_entrypoint(name)
        return modules.index(fn.__module__), inspect.getsourcelines(fn)[1], name
    return sorted(names, key=key)


def load_data() -> Dict:
    with open(DATA) as f:
        return json.load(f)


def save_data(data: Dict) -> None:
    with open(DATA, 'w') as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write('\n')


def readme_rows(text: str) -> Dict[str, Dict]:
    """``{name: {gmacs, top1 (as written)}}`` of the README's model-table rows (hand-written rows of new families)."""
    out = {}
    for name, _, gmacs, _, top1 in _ROW.findall(text):
        out[name] = dict(gmacs=float(gmacs), top1=top1 if top1 and top1[0].isdigit() else None)
    return out


def _params(name: str) -> int:
    import timm
    model = timm.create_model(name, device='meta')
    return sum(p.numel() for p in model.parameters())


def _resolution(name: str) -> int:
    import timm
    size = timm.get_pretrained_cfg(name).input_size
    if size[1] != size[2]:
        raise ValueError(f'{name}: non-square input size {size} does not fit the table')
    return int(size[1])


def refresh_counts(data: Dict, names: List[str]) -> None:
    """Store each model's parameter count and resolution (counted from the model, built on the meta device)."""
    for name in names:
        data['models'][name]['params'] = _params(name)
        data['models'][name]['res'] = _resolution(name)


def render(data: Dict, names: List[str]) -> str:
    """The table (header + one row per model) as Markdown."""
    rows = [HEADER]
    for name in names:
        entry = data['models'][name]
        img_s = entry.get('cpu_img_s')
        rows.append(f'| `{name}` | {entry["params"]:,} | {entry["gmacs"]:.3f} | {entry["res"]} | '
                    f'{entry.get("top1") or "—"} | '
                    f'{"—" if img_s is None else f"{img_s:.3g}"} |')
    return '\n'.join(rows) + '\n\n' + cpu_note(data, names)


def cpu_note(data: Dict, names: List[str]) -> str:
    """The paragraph under the table: how the CPU img/s were measured and under which load."""
    loads = [data['models'][n]['cpu_load'] for n in names if data['models'][n].get('cpu_load') is not None]
    spread = (f' The load average after each model ({min(loads):.1f} to {max(loads):.1f}) is stored as its '
              f'`cpu_load` in `bench/model_table.json`: rows measured under different load are not comparable '
              f'with each other.' if loads else '')
    return (f'CPU img/s: {data["cpu"]}. Indicative only: one model at a time on a machine shared with other '
            f'jobs.{spread} The speed comparisons are the same-run ratios in [BENCHMARKS.md](BENCHMARKS.md).')


def complete_data(data: Dict, readme_text: str, strict: bool = True) -> List[str]:
    """Add the published models missing from ``data`` from their README rows; the ordered names.

    Raises:
        ValueError: a published model has neither a data entry nor a README row.
    """
    names = published_models()
    rows = readme_rows(readme_text)
    missing = []
    for name in names:
        if name not in data['models']:
            if name not in rows:
                missing.append(name)
                continue
            top1 = rows[name]['top1']
            data['models'][name] = dict(gmacs=rows[name]['gmacs'], top1=top1, cpu_img_s=None)
    if missing and not strict:
        names = [n for n in names if n not in missing]
    elif missing:
        raise ValueError(f'no GMACs / top-1 for {missing}: add them to {DATA.name} (official fvcore GMACs and '
                         f'paper top-1 from paper_table.csv) or a README row')
    for stale in [n for n in data['models'] if n not in names]:
        del data['models'][stale]
    return _order(names, data)


def rewrite_readme(text: str, table: str) -> str:
    """``text`` with the block between the markers replaced by ``table``.

    Raises:
        ValueError: the markers are missing.
    """
    if START not in text or END not in text:
        raise ValueError(f'README has no model-table markers ({START!r} ... {END!r})')
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f'{head}{START}\n{table}\n{END}{tail}'


def measure(data: Dict, names: List[str], max_gmacs: float, repeats: int, budget: float,
            large_gmacs: float = 50.0) -> None:
    """CPU inference img/s at batch 1 of each model up to ``max_gmacs`` (bench.models.measure, one at a time).

    Models above ``large_gmacs`` get one warm-up call (two below) and at most two timed calls. The data file's
    ``cpu`` entry records the machine, threads and the range of the 1-minute load average seen during the run.
    """
    import os

    import torch

    from .common import machine
    from .models import measure as bench_measure
    loads = [os.getloadavg()[0]]
    for name in names:
        entry = data['models'][name]
        if entry['gmacs'] > max_gmacs:
            continue
        large = entry['gmacs'] > large_gmacs
        res = _resolution(name)
        result = bench_measure([name], 1, res, 'cpu', min(repeats, 2) if large else repeats, budget, memory=False,
                               warmup=1 if large else 2)
        entry['cpu_img_s'] = round(result[name]['img_s'], 3)
        loads.append(os.getloadavg()[0])
        entry['cpu_load'] = round(loads[-1], 1)  # the machine's 1-minute load average right after the model
        print(f'{name}: {entry["cpu_img_s"]} img/s (load {loads[-1]:.1f})', flush=True)
        save_data(data)
    data['cpu'] = (f'{machine("cpu")}; inference, batch 1, median of up to {repeats} calls after 2 warm-ups '
                   f'(1 warm-up and up to 2 calls above {large_gmacs:g} GMACs; bench.models.measure); '
                   f'{os.cpu_count()} cores; 1-minute load average {min(loads):.1f}-{max(loads):.1f} during the run')
    del torch


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='exit 1 if the README table is not up to date')
    parser.add_argument('--measure', action='store_true', help='measure CPU img/s and store it in the data file')
    parser.add_argument('--models', nargs='+', default=None, help='--measure only these models')
    parser.add_argument('--max-gmacs', type=float, default=float('inf'), help='--measure models up to this many GMACs')
    parser.add_argument('--large-gmacs', type=float, default=50.0,
                        help='--measure: one warm-up and at most two timed calls above this many GMACs')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--budget', type=float, default=5.0, help='seconds of timed calls per model')
    args = parser.parse_args(argv)
    data = load_data()
    if args.measure:  # the models with data so far; saved at once (the table needs every model's data)
        names = complete_data(data, README.read_text(), strict=False)
        measure(data, args.models or names, args.max_gmacs, args.repeats, args.budget, args.large_gmacs)
        save_data(data)
    text = README.read_text()  # read after a long --measure: others may have edited the README meanwhile
    names = complete_data(data, text)
    if not args.check:
        refresh_counts(data, names)
    new_text = rewrite_readme(text, render(data, names))
    if args.check:
        if new_text != text:
            print('README model table is out of date: run python -m bench.model_table', file=sys.stderr)
            return 1
        return 0
    save_data(data)
    README.write_text(new_text)
    print(f'README model table: {len(names)} models')
    return 0


if __name__ == '__main__':
    sys.exit(main())
