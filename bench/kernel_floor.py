"""Where a CPU step goes: a model's time in its dense kernels (GEMMs, convolutions, attention) against a peer's step.

    python -m bench.kernel_floor [--models ravlt_small] [--peers swin_tiny_patch4_window7_224]
                                 [--modes training inference] [--batch 1 8] [--rounds 3] [--threads 2]

For every mode and batch, the steps of :mod:`bench.models` (an eval forward, or a training step with AdamW) of the
models and the peers are timed round-robin (:func:`bench.common.time_fns`), and one step of each is then run under
``torch.profiler``: the self CPU time of its dense kernels (:data:`DENSE`: oneDNN / MKL GEMMs and convolutions, CPU
SDPA, forward and backward) and of its normalisation and activation kernels (:data:`NORM_ACT`). Each round does
both; the table gives the median over ``--rounds`` rounds. The GEMMs' rate (``GEMM GFLOP/s``) divides the FLOPs that
``torch.utils.flop_counter`` counts for them in one step by their profiled time: two models whose GEMMs run at the
same rate differ in the work they do, not in how well it runs.

The columns ``dense / peer step`` and ``dense + norm/act / peer step`` bound what removing or fusing a model's other
ops (views, copies, elementwise arithmetic, allocations) can bring: a model whose dense kernels alone take as long
as the peer's whole step cannot reach the peer's speed that way, whatever the framework fuses. Profiled kernel times
are taken in the step, with its cache and allocator state (an op runs slower there than alone in a loop).
CPU only: on a GPU the profiler's CPU time of an op is its launch, not its kernel.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable, Dict, List, Optional

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from .common import fmt_ms, fmt_ratio, machine, markdown_table, time_fns
from .models import build_model, step_fn

__all__ = ['GEMM', 'DENSE', 'NORM_ACT', 'kernel_times', 'gemm_flops', 'measure', 'main']

GEMM = frozenset({'aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm'})
# aten ops whose self time is the arithmetic of a GEMM, a convolution or an attention (forward and backward)
DENSE = GEMM | frozenset({
    'aten::mkldnn_convolution', 'aten::convolution_backward', 'aten::_slow_conv2d_forward',
    'aten::_slow_conv2d_backward', 'aten::thnn_conv2d',
    'aten::_scaled_dot_product_flash_attention_for_cpu', 'aten::_scaled_dot_product_flash_attention_for_cpu_backward',
})
# normalisation, activation and softmax kernels (forward and backward)
NORM_ACT = frozenset({
    'aten::native_layer_norm', 'aten::native_layer_norm_backward',
    'aten::native_batch_norm', 'aten::native_batch_norm_backward',
    'aten::gelu', 'aten::gelu_backward', 'aten::silu', 'aten::silu_backward',
    'aten::_softmax', 'aten::_softmax_backward_data',
})


def kernel_times(step: Callable[[], object]) -> Dict[str, float]:
    """Self CPU seconds of one call of ``step``: ``dense`` (ops in :data:`DENSE`), ``gemm`` (:data:`GEMM`, part of
    ``dense``), ``norm_act`` (:data:`NORM_ACT`) and ``total`` (every op the profiler records)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()

    def seconds(keep: Callable[[str], bool]) -> float:
        return sum(e.self_cpu_time_total for e in events if keep(e.key)) / 1e6

    return {'dense': seconds(DENSE.__contains__), 'gemm': seconds(GEMM.__contains__),
            'norm_act': seconds(NORM_ACT.__contains__), 'total': seconds(lambda key: True)}


def gemm_flops(step: Callable[[], object]) -> float:
    """FLOPs of the GEMMs (:data:`GEMM`) of one call of ``step``, as ``torch.utils.flop_counter`` counts them (two
    per multiply-add)."""
    names = {name.split('::')[1] for name in GEMM}
    with FlopCounterMode(display=False) as counter:
        step()
    counts = counter.get_flop_counts().get('Global', {})
    return float(sum(flops for op, flops in counts.items() if str(op).split('.')[-1] in names))


def measure(names: List[str], batch: int, img_size: int, mode: str, rounds: int, repeats: int, budget_s: float,
            drop_path: float = 0.1) -> Dict[str, Dict[str, float]]:
    """Per model: ``step`` (median wall seconds of the round-robin timing) and the medians of :func:`kernel_times`,
    over ``rounds`` rounds of timing then profiling, all models built once in this process; and ``gemm_flops`` of
    one step."""
    models = {n: build_model(n, 'cpu', img_size, mode, drop_path) for n in names}
    x = torch.randn(batch, 3, img_size, img_size)
    steps = {n: step_fn(m, x, mode) for n, m in models.items()}
    samples: Dict[str, Dict[str, List[float]]] = {
        n: {'step': [], 'dense': [], 'gemm': [], 'norm_act': [], 'total': []} for n in names}
    for _ in range(rounds):
        for name, seconds in time_fns(steps, 'cpu', repeats=repeats, budget_s=budget_s).items():
            samples[name]['step'].append(seconds)
        for name, step in steps.items():
            for key, seconds in kernel_times(step).items():
                samples[name][key].append(seconds)
    out = {n: {k: statistics.median(v) for k, v in s.items()} for n, s in samples.items()}
    for name, step in steps.items():
        out[name]['gemm_flops'] = gemm_flops(step)
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=['ravlt_small'])
    parser.add_argument('--peers', nargs='+', default=['swin_tiny_patch4_window7_224'])
    parser.add_argument('--modes', nargs='+', default=['training', 'inference'], choices=('inference', 'training'))
    parser.add_argument('--batch', nargs='+', type=int, default=[1, 8])
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--drop-path', type=float, default=0.1, help='drop_path_rate of every model in training')
    parser.add_argument('--rounds', type=int, default=3, help='rounds of timing then profiling (median over them)')
    parser.add_argument('--repeats', type=int, default=6, help='timed steps per model and round')
    parser.add_argument('--budget', type=float, default=15.0, help='seconds of timed steps per round, slowest model')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch default)')
    args = parser.parse_args(argv)
    for option in ('batch', 'rounds', 'repeats', 'img_size', 'threads'):
        values = getattr(args, option)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and value < 1:
                parser.error(f'--{option.replace("_", "-")} must be >= 1, got {value}')
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(dict.fromkeys(args.models + args.peers))
    print(f'# bench.kernel_floor: {machine("cpu")}; {args.img_size}px fp32; median of {args.rounds} rounds')
    headers = ['model', 'mode', 'batch', 'step ms', 'dense ms', 'norm/act ms', 'all ops ms (profiled)', 'GEMM GFLOP',
               'GEMM GFLOP/s']
    for peer in args.peers:
        headers += [f'speed vs {peer}', f'dense / {peer} step', f'dense + norm/act / {peer} step']
    rows = []
    for mode in args.modes:
        for batch in args.batch:
            r = measure(names, batch, args.img_size, mode, args.rounds, args.repeats, args.budget, args.drop_path)
            for name in names:
                m = r[name]
                row = [name, mode, batch, *(fmt_ms(m[k]) for k in ('step', 'dense', 'norm_act', 'total')),
                       f'{m["gemm_flops"] / 1e9:.3g}', f'{m["gemm_flops"] / max(m["gemm"], 1e-9) / 1e9:.3g}']
                for peer in args.peers:
                    peer_step = r[peer]['step']
                    row += [fmt_ratio(peer_step, m['step']), fmt_ratio(m['dense'], peer_step),
                            fmt_ratio(m['dense'] + m['norm_act'], peer_step)]
                rows.append(row)
    print(markdown_table(headers, rows), flush=True)


if __name__ == '__main__':
    main()
