"""Linear attentions against softmax attention of equal width as the token count grows.

Each registered linear attention (its stage-1 width and heads in the released models) runs on square token maps
from 14x14 up to 256x256 tokens (a 1024x1024-px input at stride 4), against softmax attention of the same width
and heads (``qkv`` Linear -> ``F.scaled_dot_product_attention`` -> ``proj``, what a ViT block computes). Printed per
map: forward time of both, their ratio, and the peak bytes of live tensors during one forward (the memory the
attention needs above its parameters and input, counted by a dispatch mode over the ops, so it is measured the same
way on every device; on CUDA the caching allocator's peak is printed too). The crossover is the first map where the
linear attention is faster than softmax; the growth columns give time and memory relative to the previous map
(tokens x4 per step: x4 means linear growth, x16 quadratic).

Softmax attention runs up to ``--max-softmax-tokens`` (its time grows quadratically); the memory of both is counted
on the device that runs them, so SDPA's own kernel choice (flash / memory-efficient / math) is what is measured::

    python -m bench.linear                       # every registered attention, CPU float32
    python -m bench.linear --attn rala flow --device cuda --dtype float16

To add an attention, add a :class:`LinearAttn` to ``REGISTRY`` (``build(dim, num_heads, device, dtype)`` returning a
module and ``run(module, x)`` calling it on a channels-last ``[B, H, W, C]`` map).
"""
from __future__ import annotations

import argparse
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .common import fmt_ms, machine, markdown_table, peak_memory, time_fns

SIDES = (14, 28, 56, 112, 224, 256)


@dataclass(frozen=True)
class LinearAttn:
    """A registered attention: its stage-1 width and heads, how to build it and how to call it on ``[B, H, W, C]``."""
    dim: int
    num_heads: int
    build: Callable[..., nn.Module]
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    note: str = ''


def _rala_build(dim, num_heads, device=None, dtype=None):
    from zoo.layers import RalaAttention2d, Rope2d
    mod = RalaAttention2d(dim, num_heads, mode='rala', device=device, dtype=dtype)
    mod.rope = Rope2d(dim // num_heads, device=device, dtype=dtype)
    return mod


def _rala_run(mod, x):
    x = x.permute(0, 3, 1, 2).contiguous()  # RAVLT's maps are NCHW
    return mod(x, mod.rope(x.shape[-2:]))


def _flow_build(dim, num_heads, device=None, dtype=None):
    from zoo.layers import FlowAttention
    return FlowAttention(dim, num_heads, device=device, dtype=dtype)


def _inline_build(dim, num_heads, device=None, dtype=None):
    from zoo.layers import InLineAttention
    return InLineAttention(dim, num_heads, device=device, dtype=dtype)


REGISTRY: Dict[str, LinearAttn] = {
    # RAVLT-T/S stage 1: 64 channels, one head (RALA with RoPE, LePE 5x5 and the output gate)
    'rala': LinearAttn(64, 1, _rala_build, _rala_run, 'RAVLT-T/S stage 1'),
    # Flowformer stage 1: 96 channels, 12 heads of 8
    'flow': LinearAttn(96, 12, _flow_build, lambda mod, x: mod(x), 'Flowformer stage 1'),
    # InLine-Swin-T stage 1: 96 channels, 3 heads of 32 (injective linear attention + per-sample 3x3 local residual)
    'inline': LinearAttn(96, 3, _inline_build, lambda mod, x: mod(x), 'InLine-Swin-T stage 1'),
}


class SoftmaxAttention(nn.Module):
    """The softmax baseline: ``qkv`` Linear, SDPA over all tokens, ``proj``, channels-last."""

    def __init__(self, dim: int, num_heads: int, device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, H, W, C))


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors created inside the mode that are alive at once (storages counted once)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr() if t.device.type != 'meta' else id(storage)
                if key in self._seen:
                    continue
                nbytes = storage.nbytes()
                self._seen.add(key)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._release, key, nbytes)
        return out


def live_peak(fn: Callable[[], torch.Tensor]) -> int:
    """Peak live bytes of the tensors ``fn`` creates (its output included)."""
    mode = LiveBytes()
    with torch.no_grad(), mode:
        out = fn()
    del out
    return mode.peak


def _mb(nbytes: Optional[int]) -> str:
    return 'n/a' if nbytes is None else f'{nbytes / 2 ** 20:.3g}'


def _growth(cur: Optional[float], prev: Optional[float]) -> str:
    if cur is None or prev is None or prev <= 0:
        return ''
    return f'x{cur / prev:.1f}'


def bench_one(name: str, sides: List[int], device: str, dtype: torch.dtype, batch: int, max_softmax_tokens: int,
              budget: float) -> str:
    spec = REGISTRY[name]
    torch.manual_seed(0)
    lin = spec.build(spec.dim, spec.num_heads, device=device, dtype=dtype).eval()
    soft = SoftmaxAttention(spec.dim, spec.num_heads, device=device, dtype=dtype).eval()
    rows, crossover = [], None
    prev = {}
    for side in sides:
        n = side * side
        shape = (batch, side, side, spec.dim)
        x = torch.randn(shape, device=device, dtype=dtype)
        fns = {'linear': lambda x=x: spec.run(lin, x)}
        if n <= max_softmax_tokens:
            fns['softmax'] = lambda x=x: soft(x)
        with torch.no_grad():
            times = time_fns(fns, device, warmup=1, repeats=5, budget_s=budget, stat='min')
        mem_lin = live_peak(fns['linear'])
        mem_soft = live_peak(fns['softmax']) if 'softmax' in fns else None
        cuda = {}
        if torch.device(device).type == 'cuda':
            with torch.no_grad():
                cuda = {k: peak_memory(f, device) for k, f in fns.items()}
        t_lin, t_soft = times['linear'], times.get('softmax')
        if t_soft is not None and t_lin < t_soft and crossover is None:
            crossover = n
        rows.append([
            f'{side}x{side}', n, fmt_ms(t_lin), fmt_ms(t_soft),
            'n/a' if t_soft is None else f'{t_soft / t_lin:.3g}x',
            _growth(t_lin, prev.get('t_lin')), _growth(t_soft, prev.get('t_soft')),
            _mb(mem_lin), _mb(mem_soft), _growth(mem_lin, prev.get('m_lin')), _growth(mem_soft, prev.get('m_soft')),
            *([_mb(cuda.get('linear')), _mb(cuda.get('softmax'))] if cuda else []),
        ])
        prev = dict(t_lin=t_lin, t_soft=t_soft, m_lin=mem_lin, m_soft=mem_soft)
    headers = ['tokens', 'N', f'{name} ms', 'softmax ms', 'softmax/linear', f'{name} time growth',
               'softmax time growth', f'{name} MiB', 'softmax MiB', f'{name} mem growth', 'softmax mem growth']
    if torch.device(device).type == 'cuda':
        headers += [f'{name} CUDA peak MiB', 'softmax CUDA peak MiB']
    head = (f'### {name} ({spec.note}: dim {spec.dim}, {spec.num_heads} heads) vs SDPA softmax, batch {batch}, '
            f'{str(dtype).replace("torch.", "")}\n\n')
    tail = (f'\n\nCrossover: linear faster from N = {crossover} tokens.' if crossover else
            '\n\nCrossover: not reached in the timed range.')
    return head + markdown_table(headers, rows) + tail


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--attn', nargs='+', default=sorted(REGISTRY), choices=sorted(REGISTRY))
    parser.add_argument('--sides', nargs='+', type=int, default=list(SIDES), help='token map sides')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--max-softmax-tokens', type=int, default=112 * 112,
                        help='run softmax attention only up to this many tokens')
    parser.add_argument('--budget', type=float, default=3.0, help='seconds of timed calls per map')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f'{machine(args.device)}\n')
    for name in args.attn:
        print(bench_one(name, args.sides, args.device, dtype, args.batch, args.max_softmax_tokens, args.budget))
        print()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())


__all__ = ['LinearAttn', 'REGISTRY', 'SoftmaxAttention', 'LiveBytes', 'live_peak', 'bench_one', 'main']
