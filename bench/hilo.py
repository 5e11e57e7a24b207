"""HiLo against window attention and spatial-reduction attention of equal width as the resolution grows.

The LITv2 paper (Pan et al., NeurIPS 2022, "Fast Vision Transformers with HiLo Attention") reports HiLo as faster
than the other efficient attentions it compares, including Swin's window attention and PVT's spatial-reduction
attention, on CPU and GPU over a range of image resolutions. This script checks that claim for the zoo's layers, in
one run, as pre-norm attention blocks ``x + attn(norm(x))`` (:class:`~zoo.layers.PreNormBlockCl` without the MLP,
which would be the same in all three) of LITv2-S's stage-3 width (384 channels, 12 heads) on channels-last maps:

* ``hilo``: :class:`~zoo.layers.HiLoAttentionCl`, window 2, alpha 0.9 (10 Lo-Fi heads on 2x2-pooled keys, 2 Hi-Fi
  heads in 2x2 windows), LITv2-S's stage 3;
* ``window``: Swin's W-MSA, 7x7 windows (:func:`~zoo.layers.window_partition` / :func:`~zoo.layers.window_reverse`,
  padded where 7 does not divide the map) with Swin's relative position bias (:class:`~zoo.layers.RelPosBias`),
  ``qkv`` -> SDPA with the bias -> ``proj``;
* ``sra``: PVT's :class:`~zoo.layers.SpatialReductionAttentionCl`, reduction ratio 2 (PVTv2's stage 3).

The maps are the stride-16 maps of square images (224 px -> 14x14 ... 1792 px -> 112x112). Printed per map: the
forward (``no_grad``) and the forward + backward time of each block, timed round-robin
(:func:`bench.common.time_fns`), and the time ratios to HiLo (above 1: HiLo is faster).

    python -m bench.hilo [--sides 14 28 56 112] [--batch 1] [--device cpu] [--threads N]
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.layers import (
    HiLoAttentionCl,
    PreNormBlockCl,
    RelPosBias,
    SpatialReductionAttentionCl,
    window_partition,
    window_reverse,
)

from .common import fmt_ms, fmt_ratio, machine, markdown_table, time_fns

DIM, HEADS = 384, 12
SIDES = (14, 28, 56, 112)


class WindowAttentionCl(nn.Module):
    """Swin's W-MSA on a channels-last map (no shift): 7x7 windows of the shared partition, Swin's RelPosBias."""

    def __init__(self, dim: int, num_heads: int = 8, window_size: int = 7, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dim, dim * 3, **dd)
        self.rel_pos = RelPosBias(window_size, num_heads, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        ws = self.window_size
        windows = window_partition(x, ws)  # [B * nW, ws, ws, C]
        n = ws * ws
        qkv = self.qkv(windows).view(-1, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=self.rel_pos.get_bias())
        out = out.transpose(1, 2).reshape(-1, ws, ws, C)
        return self.proj(window_reverse(out, ws, (H, W)))


BLOCKS: Dict[str, Callable[..., nn.Module]] = {
    'hilo': lambda **dd: PreNormBlockCl(DIM, HiLoAttentionCl, mlp_layer=None, attn_kwargs=dict(
        num_heads=HEADS, window_size=2, alpha=0.9, qkv_bias=True), **dd),
    'window': lambda **dd: PreNormBlockCl(DIM, WindowAttentionCl, mlp_layer=None, attn_kwargs=dict(
        num_heads=HEADS, window_size=7), **dd),
    'sra': lambda **dd: PreNormBlockCl(DIM, SpatialReductionAttentionCl, mlp_layer=None, attn_kwargs=dict(
        num_heads=HEADS, sr_ratio=2), **dd),
}


def _steps(blocks: Dict[str, nn.Module], x: torch.Tensor, backward: bool) -> Dict[str, Callable[[], None]]:
    def make(block):
        if not backward:
            def forward():
                with torch.no_grad():
                    block(x)
            return forward

        def forward_backward():
            block.zero_grad(set_to_none=True)
            block(x).square().mean().backward()
        return forward_backward
    return {name: make(block) for name, block in blocks.items()}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sides', nargs='+', type=int, default=list(SIDES), help='map sides (tokens)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--budget', type=float, default=5.0, help='seconds of timed calls for the slowest block')
    parser.add_argument('--stat', default='median', choices=('median', 'min'))
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    blocks = {name: build(device=args.device).train() for name, build in BLOCKS.items()}
    print(f'# bench.hilo: {machine(args.device)}; width {DIM}, {HEADS} heads, batch {args.batch}, fp32; '
          f'{args.stat} of up to {args.repeats} round-robin repeats')
    others = [n for n in BLOCKS if n != 'hilo']
    headers = ['map (image px)'] + [f'{n} fwd' for n in BLOCKS] + [f'{n} / hilo fwd' for n in others]
    headers += [f'{n} fwd+bwd' for n in BLOCKS] + [f'{n} / hilo fwd+bwd' for n in others]
    rows = []
    for side in args.sides:
        x = torch.randn(args.batch, side, side, DIM, device=args.device, requires_grad=False)
        fwd = time_fns(_steps(blocks, x, False), args.device, repeats=args.repeats, budget_s=args.budget,
                       stat=args.stat)
        bwd = time_fns(_steps(blocks, x, True), args.device, repeats=args.repeats, budget_s=args.budget,
                       stat=args.stat)
        row = [f'{side}x{side} ({side * 16})']
        row += [fmt_ms(fwd[n]) for n in BLOCKS] + [fmt_ratio(fwd[n], fwd['hilo']) for n in others]
        row += [fmt_ms(bwd[n]) for n in BLOCKS] + [fmt_ratio(bwd[n], bwd['hilo']) for n in others]
        rows.append(row)
        print(f'{side}x{side} done', flush=True)
    print()
    print(markdown_table(headers, rows), flush=True)


if __name__ == '__main__':
    main()
