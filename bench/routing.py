"""Bi-level routing attention: our default backend against the official-style gather.

    python -m bench.routing [--device cpu|cuda] [--quick] [--backend NAME] [--repeats N] [--threads N] [--stat min]

Shapes (kernels.md §5.5): BiFormer at 224 px (n_win 7: 56x56 / 28x28 / 14x14 maps, M = 64 / 16 / 4 tokens per
region, topk 1 / 4 / 16, 3 / 6 / 12 heads of 32 as BiFormer-B) and ADE20K at 512 px (n_win 8: 128x128 / 64x64 /
32x32, M = 256 / 64 / 16, topk 1 / 4 / 16, 2 / 4 / 8 heads of 32 as BiFormer-S), batch 2 on CPU, 128 (224 px) and
16 (512 px) on CUDA. The scale is BiFormer's ``C ** -0.5`` with the full channel count.

The peer is the gather of the official code: K/V rows of the routed regions gathered to ``[B, H, nR, topk * Mk,
D]``, dense logits, softmax, product with the gathered V. On CPU it is our reference (fp32, the same operations);
on CUDA the same steps in the input dtype (bf16, as BiFormer under autocast), plus SDPA on the gathered K/V.

CPU: fp32 forward and forward+backward times with ratios, and the bytes each path holds beyond its inputs and
outputs, computed (gathered K+V rows and the fp32 logits and probabilities for the gather; one chunk for ours).
CUDA: bf16 forward, backward and forward+backward times, useful TFLOP/s (``4 * B * H * N * topk * Mk * D``
forward, 2.5x that backward), GB/s from the minimal bytes, speed-of-light fraction, ratios to both peers, and the
peak memory of forward+backward measured with ``torch.cuda.max_memory_allocated``. Ratios are peer time / our
time: above 1 means ours is faster.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoo_kernels import routed_attention
from zoo_kernels.routing.reference import bra_reference, gather_regions

from .common import fmt_ms, fmt_ratio, machine, markdown_table, peak_memory, time_fns

MIB = 2 ** 20


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    side: int  # token map side (square maps)
    n_win: int  # regions per side
    topk: int
    heads: int
    head_dim: int = 32
    quick: bool = True

    @property
    def regions(self) -> int:
        return self.n_win ** 2

    @property
    def tokens_per_region(self) -> int:
        return (self.side // self.n_win) ** 2

    def label(self) -> str:
        return (f'{self.name} {self.side}x{self.side} B{self.batch} h{self.heads} M{self.tokens_per_region} '
                f'topk{self.topk}')


def _shapes(batch_224: int, batch_512: int) -> list[Shape]:
    return [
        Shape('224 s1', batch_224, 56, 7, 1, 3),
        Shape('224 s2', batch_224, 28, 7, 4, 6),
        Shape('224 s3', batch_224, 14, 7, 16, 12),
        Shape('ADE-512 s1', batch_512, 128, 8, 1, 2),
        Shape('ADE-512 s2', batch_512, 64, 8, 4, 4),
        Shape('ADE-512 s3', batch_512, 32, 8, 16, 8, quick=False),
    ]


CPU_SHAPES = _shapes(2, 2)
CUDA_SHAPES = _shapes(128, 16)


def make_inputs(shape: Shape, device, dtype, requires_grad: bool):
    size = (shape.batch, shape.heads, shape.regions, shape.tokens_per_region, shape.head_dim)
    q, k, v = (torch.randn(size, device=device, dtype=dtype, requires_grad=requires_grad) for _ in range(3))
    # routing as BiFormer: topk of region-descriptor logits, shared by the heads
    descriptors = torch.randn(shape.batch, shape.regions, shape.head_dim * shape.heads, device=device)
    r_idx = (descriptors @ descriptors.transpose(1, 2)).topk(shape.topk, dim=-1).indices
    return q, k, v, r_idx


def official_gather(q, k, v, r_idx, scale):
    """The official code's steps in the input dtype: gather K/V rows, dense logits, softmax, product with V."""
    batch, heads, n_q, m, _ = q.shape
    idx = r_idx.unsqueeze(1).expand(batch, heads, -1, -1)
    k_sel = gather_regions(k, idx).flatten(3, 4)
    v_sel = gather_regions(v, idx).flatten(3, 4)
    attn = torch.softmax((q * scale) @ k_sel.transpose(-1, -2), dim=-1)
    return attn @ v_sel


def gather_sdpa(q, k, v, r_idx, scale):
    """Gathered K/V rows through SDPA (FlashAttention on CUDA): the best the gather can do."""
    batch, heads, n_q, m, d = q.shape
    idx = r_idx.unsqueeze(1).expand(batch, heads, -1, -1)
    k_sel = gather_regions(k, idx).flatten(3, 4).flatten(1, 2)
    v_sel = gather_regions(v, idx).flatten(3, 4).flatten(1, 2)
    out = F.scaled_dot_product_attention(q.flatten(1, 2), k_sel, v_sel, scale=scale)
    return out.view(batch, heads, n_q, m, -1)


def gather_bytes(shape: Shape, elt: int) -> tuple[int, int]:
    """(gathered K+V rows, fp32 logits + probabilities) of the official forward, in bytes."""
    b, h, n, m, t, d = shape.batch, shape.heads, shape.regions, shape.tokens_per_region, shape.topk, shape.head_dim
    return b * h * n * t * m * 2 * d * elt, 2 * b * h * n * m * t * m * 4


def _fwd_bwd(fn, leaves):
    grad = []

    def run():
        out = fn()
        if not grad:
            grad.append(torch.randn_like(out))
        torch.autograd.grad(out, leaves, grad[0])
    return run


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def bench_cpu(shapes, backend: str, repeats: int, stat: str = 'median') -> str:
    from zoo_kernels.routing.torch_impl import _CHUNK_BYTES
    rows = []
    for shape in shapes:
        print(f'{shape.label()} ...', file=sys.stderr, flush=True)
        q, k, v, r_idx = make_inputs(shape, 'cpu', torch.float32, requires_grad=True)
        scale = (shape.head_dim * shape.heads) ** -0.5

        def ours():
            return routed_attention(q, k, v, r_idx, scale=scale, backend=backend)

        def gather():
            return bra_reference(q, k, v, r_idx, None, scale)[0]

        t_fwd = time_fns({'ours': _no_grad(ours), 'gather': _no_grad(gather)}, 'cpu', warmup=1, repeats=repeats,
                         stat=stat)
        t_fb = time_fns({'ours': _fwd_bwd(ours, (q, k, v)), 'gather': _fwd_bwd(gather, (q, k, v))}, 'cpu',
                        warmup=1, repeats=repeats, stat=stat)
        kv, logits = gather_bytes(shape, 4)
        rows.append([
            shape.label(), fmt_ms(t_fwd['ours']), fmt_ms(t_fwd['gather']), fmt_ratio(t_fwd['gather'], t_fwd['ours']),
            fmt_ms(t_fb['ours']), fmt_ms(t_fb['gather']), fmt_ratio(t_fb['gather'], t_fb['ours']),
            f'{kv / MIB:.1f} + {logits / MIB:.1f}', f'<= {min(kv + logits, _CHUNK_BYTES) / MIB:.1f}',
        ])
    headers = ['shape (fp32)', f'{backend} fwd ms', 'gather fwd ms', 'speedup fwd', f'{backend} fwd+bwd ms',
               'gather fwd+bwd ms', 'speedup fwd+bwd', 'gather: K/V + logits MiB', f'{backend}: chunk MiB']
    return markdown_table(headers, rows)


def bench_cuda(shapes, backend: str, repeats: int, peak_bw: float, peak_flops: float, device='cuda',
               stat: str = 'median') -> str:
    device = torch.device(device)
    dtype = torch.bfloat16
    elt = torch.finfo(dtype).bits // 8
    rows = []
    for shape in shapes:
        print(f'{shape.label()} ...', file=sys.stderr, flush=True)
        q, k, v, r_idx = make_inputs(shape, device, dtype, requires_grad=True)
        scale = (shape.head_dim * shape.heads) ** -0.5
        b, h, n, t, d = shape.batch, shape.heads, shape.regions * shape.tokens_per_region, shape.topk, shape.head_dim
        mk = shape.tokens_per_region

        def ours():
            return routed_attention(q, k, v, r_idx, scale=scale, backend=backend)

        def gather():
            return official_gather(q, k, v, r_idx, scale)

        def sdpa():
            return gather_sdpa(q, k, v, r_idx, scale)

        out = ours()
        grad = torch.randn_like(out)

        def backward():
            torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)

        fwd = {'ours': _no_grad(ours), 'gather': _no_grad(gather), 'sdpa': _no_grad(sdpa)}
        fwd_bwd = {'ours': _fwd_bwd(ours, (q, k, v)), 'gather': _fwd_bwd(gather, (q, k, v)),
                   'sdpa': _fwd_bwd(sdpa, (q, k, v))}
        t_fwd = time_fns(fwd, device, warmup=3, repeats=repeats, stat=stat)
        t_fb = time_fns(fwd_bwd, device, warmup=3, repeats=repeats, stat=stat)
        t_bwd = time_fns({'ours': backward}, device, warmup=3, repeats=repeats, stat=stat)['ours']
        out = grad = None  # free them before the memory measurement
        mem = {name: peak_memory(fn, device) for name, fn in fwd_bwd.items()}

        flops_fwd = 4 * b * h * n * t * mk * d
        flops_bwd = 2.5 * flops_fwd
        bytes_fwd = b * h * n * 4 * d * elt + 4 * b * h * n
        bytes_bwd = b * h * n * (8 * d * elt + 8)
        sol_fwd = max(flops_fwd / peak_flops, bytes_fwd / peak_bw) / t_fwd['ours']
        sol_bwd = max(flops_bwd / peak_flops, bytes_bwd / peak_bw) / t_bwd
        rows.append([
            shape.label(), fmt_ms(t_fwd['ours']), fmt_ms(t_bwd), fmt_ms(t_fb['ours']),
            f'{flops_fwd / t_fwd["ours"] / 1e12:.1f}', f'{bytes_fwd / t_fwd["ours"] / 1e9:.0f}',
            f'{sol_fwd:.0%}', f'{sol_bwd:.0%}',
            fmt_ratio(t_fwd['gather'], t_fwd['ours']), fmt_ratio(t_fb['gather'], t_fb['ours']),
            fmt_ratio(t_fwd['sdpa'], t_fwd['ours']), fmt_ratio(t_fb['sdpa'], t_fb['ours']),
            ' / '.join('n/a' if mem[n] is None else f'{mem[n] / MIB:.0f}' for n in ('ours', 'gather', 'sdpa')),
        ])
    headers = ['shape (bf16)', 'fwd ms', 'bwd ms', 'fwd+bwd ms', 'fwd TFLOP/s', 'fwd GB/s', 'fwd SOL', 'bwd SOL',
               'vs gather fwd', 'vs gather fwd+bwd', 'vs gather+SDPA fwd', 'vs gather+SDPA fwd+bwd',
               'peak MiB fwd+bwd ours / gather / gather+SDPA']
    return markdown_table(headers, rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--backend', default=None, help="ours: default 'torch' on CPU, 'triton' on CUDA")
    parser.add_argument('--quick', action='store_true', help='fewer shapes and repeats')
    parser.add_argument('--repeats', type=int, default=None)
    parser.add_argument('--stat', choices=('median', 'min'), default='median',
                        help="statistic of the repeats; 'min' on a machine shared with other jobs")
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads (default: torch\'s); 1 gives stable numbers on a shared machine')
    parser.add_argument('--peak-bw', type=float, default=3.35e12, help='peak memory bandwidth, bytes/s (H100 SXM)')
    parser.add_argument('--peak-flops', type=float, default=989e12, help='peak dense bf16 FLOP/s (H100 SXM)')
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = args.repeats or (5 if args.quick else 15)
    if args.device == 'cpu':
        shapes = [s for s in CPU_SHAPES if s.quick or not args.quick]
        table = bench_cpu(shapes, args.backend or 'torch', repeats, args.stat)
    else:
        shapes = [s for s in CUDA_SHAPES if s.quick or not args.quick]
        table = bench_cuda(shapes, args.backend or 'triton', repeats, args.peak_bw, args.peak_flops, stat=args.stat)
    print(f'Bi-level routing attention, {machine(args.device)}; {args.stat} of up to {repeats} round-robin repeats '
          f'after warm-up\n')
    print(table)


if __name__ == '__main__':
    main()
