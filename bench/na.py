"""Neighborhood attention: our default backend against the reference, natten and dense baselines.

    python -m bench.na [--device cpu|cuda] [--quick] [--skip-slow-peers] [--backend NAME]

CPU: fp32 forward and forward+backward of our backend ('torch'), the reference (explicit neighbour gather) and
natten's CPU path (``natten.na2d``, eager flex, forward only), with speedups measured in the same run.

CUDA: bf16 forward, backward and forward+backward of our backend ('triton'), useful TFLOP/s
(``4 * B * heads * N * prod(k) * D`` forward, 2.5x that backward), GB/s from the minimal bytes moved, the
speed-of-light fraction ``max(FLOPs / peak FLOP/s, bytes / peak bandwidth) / time``, and ratios to torch SDPA over
all tokens, to the equal-work window SDPA (``[B * N / prod(k), heads, prod(k), D]``) and to natten's default
backend. Ratios are peer time / our time: above 1 means ours is faster.
"""
from __future__ import annotations

import argparse
import math
import sys
import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoo_kernels import neighborhood_attention
from zoo_kernels.neighborhood.reference import na_reference

from .common import fmt_ms, fmt_ratio, machine, markdown_table, peak_memory, time_fns


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    spatial: tuple[int, ...]
    heads: int
    head_dim: int
    kernel_size: int
    dilation: int = 1
    rpb: bool = False
    slow: bool = False  # natten takes tens of seconds here on CPU: skipped by --skip-slow-peers
    quick: bool = True  # part of --quick

    @property
    def tokens(self) -> int:
        return math.prod(self.spatial)

    @property
    def window(self) -> int:
        return self.kernel_size ** len(self.spatial)

    def label(self) -> str:
        size = 'x'.join(map(str, self.spatial))
        extra = f' d{self.dilation}' if self.dilation > 1 else ''
        extra += ' rpb' if self.rpb else ''
        return f'{self.name} {size} B{self.batch} h{self.heads} k{self.kernel_size}{extra}'


def _nat(batch: int, quick_batches=(2,)) -> list[Shape]:
    """NAT-Tiny stages at 224 px (head_dim 32, k 7) and the DiNAT dilations of its first three stages."""
    quick = batch in quick_batches
    return [
        Shape('NAT s1', batch, (56, 56), 2, 32, 7, quick=quick),
        Shape('NAT s2', batch, (28, 28), 4, 32, 7, quick=quick),
        Shape('NAT s3', batch, (14, 14), 8, 32, 7, quick=quick),
        Shape('NAT s4', batch, (7, 7), 16, 32, 7, quick=quick),
        Shape('DiNAT s1', batch, (56, 56), 2, 32, 7, 8, quick=quick),
        Shape('DiNAT s2', batch, (28, 28), 4, 32, 7, 4, quick=quick),
        Shape('DiNAT s3', batch, (14, 14), 8, 32, 7, 2, quick=quick),
    ]


CPU_SHAPES = _nat(1) + _nat(2) + [
    Shape('anchor', 2, (56, 56), 4, 32, 7),
    Shape('anchor', 2, (56, 56), 4, 32, 7, 4),
    Shape('anchor', 2, (56, 56), 4, 32, 7, rpb=True, quick=False),
    Shape('seg s1', 1, (128, 128), 4, 32, 7, slow=True),
    Shape('DiNAT-L-384 s1', 1, (96, 96), 6, 32, 7, 13, slow=True, quick=False),
    Shape('1-D', 2, (4096,), 4, 32, 31, slow=True, quick=False),
    Shape('3-D', 1, (8, 28, 28), 4, 32, 7, slow=True, quick=False),
]

CUDA_SHAPES = _nat(128, quick_batches=(128,)) + _nat(1, quick_batches=()) + [
    Shape('DiNAT-L s1', 64, (56, 56), 6, 32, 7),
    Shape('DiNAT-L-384 s1', 32, (96, 96), 6, 32, 7, 13),
    Shape('seg s1', 16, (128, 128), 2, 32, 7),
    Shape('seg k13', 8, (128, 128), 8, 64, 13, quick=False),
    Shape('FLUX-like', 1, (256, 256), 24, 128, 80, quick=False),
]


def import_natten():
    """natten, or None when it is not installed or cannot be imported on this machine.

    natten 0.21 may read CUDA-only attributes at import; on a machine without CUDA a failed import is retried once
    with those attributes patched in.
    """
    try:
        import natten
        return natten
    except ImportError as error:
        if 'natten' in str(error) and not any(name.startswith('natten.') for name in sys.modules):
            print(f'natten unavailable: {error}', file=sys.stderr)
            return None
        first_error = error
    except Exception as error:  # noqa: BLE001 (any import failure means: no peer, after one retry)
        first_error = error
    if torch.cuda.is_available():
        print(f'natten unavailable: {type(first_error).__name__}: {first_error}', file=sys.stderr)
        return None
    for name in [name for name in sys.modules if name == 'natten' or name.startswith('natten.')]:
        del sys.modules[name]
    if not hasattr(torch.cuda, '_device_t'):
        torch.cuda._device_t = typing.Union[torch.device, str, int, None]
    torch.cuda.get_device_capability = lambda *args, **kwargs: (0, 0)
    try:
        import natten
    except Exception as error:  # noqa: BLE001
        print(f'natten unavailable: {type(error).__name__}: {error}', file=sys.stderr)
        return None
    return natten


def make_inputs(shape: Shape, device, dtype, requires_grad: bool):
    size = (shape.batch, *shape.spatial, shape.heads, shape.head_dim)
    q, k, v = (torch.randn(size, device=device, dtype=dtype, requires_grad=requires_grad) for _ in range(3))
    rpb = None
    if shape.rpb:
        rpb_size = (shape.heads,) + (2 * shape.kernel_size - 1,) * len(shape.spatial)
        rpb = torch.randn(rpb_size, device=device, dtype=torch.float32, requires_grad=requires_grad)
    return q, k, v, rpb


def _args(shape: Shape):
    rank = len(shape.spatial)
    return (shape.kernel_size,) * rank, (shape.dilation,) * rank, (1,) * rank, (False,) * rank


def _fwd_bwd(fn, inputs):
    """A callable running ``fn`` forward and backward into fresh gradients."""
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    grad = []

    def run():
        out = fn()
        if not grad:
            grad.append(torch.randn_like(out))
        torch.autograd.grad(out, leaves, grad[0])
    return run


def _guarded(fn):
    """``fn`` if one call succeeds, else None (a peer that cannot run this shape here)."""
    try:
        fn()
    except Exception as error:  # noqa: BLE001
        print(f'  peer failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}', file=sys.stderr)
        return None
    return fn


def bench_cpu(shapes, backend: str, natten, skip_slow_peers: bool, repeats: int, stat: str) -> str:
    rows = []
    for shape in shapes:
        print(f'{shape.label()} ...', file=sys.stderr, flush=True)
        q, k, v, rpb = make_inputs(shape, 'cpu', torch.float32, requires_grad=True)
        kernel_size, dilation, stride, causal = _args(shape)
        scale = shape.head_dim ** -0.5

        def ours():
            return neighborhood_attention(q, k, v, kernel_size, dilation=dilation, is_causal=causal, rpb=rpb,
                                          scale=scale, backend=backend)

        def reference():
            return na_reference(q, k, v, kernel_size, dilation, stride, causal, rpb, scale)[0]

        fwd = {'ours': _no_grad(ours), 'reference': _no_grad(reference)}
        fwd_bwd = {'ours': _fwd_bwd(ours, (q, k, v, rpb)), 'reference': _fwd_bwd(reference, (q, k, v, rpb))}
        if natten is not None and not shape.rpb and not (skip_slow_peers and shape.slow):
            na = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape.spatial)]
            # natten's CPU path refuses inputs that require grad (no backward there)
            qn, kn, vn = q.detach(), k.detach(), v.detach()
            peer = _guarded(lambda: na(qn, kn, vn, kernel_size, dilation=dilation, scale=scale))
            if peer is not None:
                fwd['natten'] = peer
        budget = 60.0 if shape.slow else 10.0
        t_fwd = time_fns(fwd, 'cpu', warmup=1, repeats=repeats, budget_s=budget, stat=stat)
        t_fb = time_fns(fwd_bwd, 'cpu', warmup=1, repeats=repeats, budget_s=budget, stat=stat)
        rows.append([
            shape.label(), fmt_ms(t_fwd['ours']), fmt_ms(t_fb['ours']),
            fmt_ms(t_fwd.get('reference')), fmt_ms(t_fb.get('reference')), fmt_ms(t_fwd.get('natten')),
            fmt_ratio(t_fwd.get('reference'), t_fwd['ours']), fmt_ratio(t_fb.get('reference'), t_fb['ours']),
            fmt_ratio(t_fwd.get('natten'), t_fwd['ours']),
        ])
    headers = ['shape (fp32)', f'{backend} fwd ms', f'{backend} fwd+bwd ms', 'reference fwd ms',
               'reference fwd+bwd ms', 'natten fwd ms', 'vs reference fwd', 'vs reference fwd+bwd', 'vs natten fwd']
    return markdown_table(headers, rows)


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def bench_cuda(shapes, backend: str, natten, repeats: int, stat: str, peak_bw: float, peak_flops: float,
               device='cuda', dtype=torch.bfloat16) -> str:
    device = torch.device(device)
    elt = torch.finfo(dtype).bits // 8
    rows = []
    for shape in shapes:
        print(f'{shape.label()} ...', file=sys.stderr, flush=True)
        q, k, v, rpb = make_inputs(shape, device, dtype, requires_grad=True)
        kernel_size, dilation, stride, causal = _args(shape)
        scale = shape.head_dim ** -0.5
        b, n, h, d, window = shape.batch, shape.tokens, shape.heads, shape.head_dim, shape.window

        def ours():
            return neighborhood_attention(q, k, v, kernel_size, dilation=dilation, is_causal=causal, rpb=rpb,
                                          scale=scale, backend=backend)

        if _guarded(ours) is None:
            rows.append([shape.label()] + ['n/a'] * 13)
            continue
        out = ours()
        grad = torch.randn_like(out)
        leaves = [t for t in (q, k, v, rpb) if t is not None]

        def backward():
            torch.autograd.grad(out, leaves, grad, retain_graph=True)

        # dense baselines in their own best layout [B, heads, tokens, D]
        qd, kd, vd = (t.detach().reshape(b, n, h, d).transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
        windows = -(-b * n // window)
        qw, kw, vw = (torch.randn(windows, h, window, d, device=device, dtype=dtype, requires_grad=True)
                      for _ in range(3))

        def dense():
            return F.scaled_dot_product_attention(qd, kd, vd, scale=scale)

        def window_sdpa():
            return F.scaled_dot_product_attention(qw, kw, vw, scale=scale)

        fwd = {'ours': _no_grad(ours), 'dense': _no_grad(dense), 'window': _no_grad(window_sdpa)}
        fwd_bwd = {'ours': _fwd_bwd(ours, leaves), 'dense': _fwd_bwd(dense, (qd, kd, vd)),
                   'window': _fwd_bwd(window_sdpa, (qw, kw, vw))}
        if natten is not None and not shape.rpb:
            na = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape.spatial)]
            qn, kn, vn = q.detach(), k.detach(), v.detach()
            peer = _guarded(lambda: na(qn, kn, vn, kernel_size, dilation=dilation, scale=scale))
            if peer is not None:
                fwd['natten'] = peer
                peer_fb = _guarded(_fwd_bwd(lambda: na(q, k, v, kernel_size, dilation=dilation, scale=scale),
                                            leaves))
                if peer_fb is not None:
                    fwd_bwd['natten'] = peer_fb
        t_fwd = time_fns(fwd, device, warmup=3, repeats=repeats, stat=stat)
        t_fb = time_fns(fwd_bwd, device, warmup=3, repeats=repeats, stat=stat)
        t_bwd = time_fns({'ours': backward}, device, warmup=3, repeats=repeats, stat=stat)['ours']
        memory = peak_memory(fwd_bwd['ours'], device)

        flops_fwd = 4 * b * h * n * window * d
        flops_bwd = 2.5 * flops_fwd
        bytes_fwd = b * n * h * 4 * d * elt + 4 * b * n * h
        bytes_bwd = b * n * h * (8 * d * elt + 8)
        sol_fwd = max(flops_fwd / peak_flops, bytes_fwd / peak_bw) / t_fwd['ours']
        sol_bwd = max(flops_bwd / peak_flops, bytes_bwd / peak_bw) / t_bwd
        rows.append([
            shape.label(), fmt_ms(t_fwd['ours']), fmt_ms(t_bwd), fmt_ms(t_fb['ours']),
            f'{flops_fwd / t_fwd["ours"] / 1e12:.1f}', f'{flops_bwd / t_bwd / 1e12:.1f}',
            f'{bytes_fwd / t_fwd["ours"] / 1e9:.0f}', f'{sol_fwd:.0%}', f'{sol_bwd:.0%}',
            fmt_ratio(t_fwd['dense'], t_fwd['ours']), fmt_ratio(t_fwd['window'], t_fwd['ours']),
            fmt_ratio(t_fb['window'], t_fb['ours']), fmt_ratio(t_fwd.get('natten'), t_fwd['ours']),
            f'{memory / 2 ** 20:.0f}' if memory is not None else 'n/a',
        ])
        out = grad = None  # free them before the next shape
    dtype_name = str(dtype).replace('torch.', '')
    headers = [f'shape ({dtype_name})', 'fwd ms', 'bwd ms', 'fwd+bwd ms', 'fwd TFLOP/s', 'bwd TFLOP/s', 'fwd GB/s',
               'fwd SOL', 'bwd SOL', 'vs SDPA all tokens fwd', 'vs window SDPA fwd', 'vs window SDPA fwd+bwd',
               'vs natten fwd', 'peak MiB fwd+bwd']
    return markdown_table(headers, rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--backend', default=None, help="ours: default 'torch' on CPU, 'triton' on CUDA")
    parser.add_argument('--quick', action='store_true', help='fewer shapes and repeats')
    parser.add_argument('--skip-slow-peers', action='store_true',
                        help='skip natten on CPU where it takes tens of seconds (large maps)')
    parser.add_argument('--no-natten', action='store_true')
    parser.add_argument('--only', nargs='+', default=None, metavar='TEXT',
                        help='only the shapes whose label contains one of these strings')
    parser.add_argument('--repeats', type=int, default=None)
    parser.add_argument('--stat', choices=('median', 'min'), default='median',
                        help="'min' on a machine shared with other jobs")
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    parser.add_argument('--peak-bw', type=float, default=3.35e12, help='peak memory bandwidth, bytes/s (H100 SXM)')
    parser.add_argument('--peak-flops', type=float, default=989e12, help='peak dense bf16 FLOP/s (H100 SXM)')
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    natten = None if args.no_natten else import_natten()
    repeats = args.repeats or (5 if args.quick else 15)
    selected = [s for s in (CPU_SHAPES if args.device == 'cpu' else CUDA_SHAPES) if s.quick or not args.quick]
    if args.only:
        selected = [s for s in selected if any(text in s.label() for text in args.only)]
    if args.device == 'cpu':
        shapes = selected
        table = bench_cpu(shapes, args.backend or 'torch', natten, args.skip_slow_peers, repeats, args.stat)
    else:
        shapes = selected
        table = bench_cuda(shapes, args.backend or 'triton', natten, repeats, args.stat, args.peak_bw,
                           args.peak_flops)
    natten_version = getattr(natten, '__version__', 'not used')
    print(f'Neighborhood attention, {machine(args.device)}; natten {natten_version}; {args.stat} of up to '
          f'{repeats} round-robin repeats after warm-up\n')
    print(table)


if __name__ == '__main__':
    main()
