"""Agent attention against softmax attention of equal width as the token count grows.

The stage-1 agent layers of the released models (Agent-Swin-T: 96 channels, 3 heads, 9 agents; Agent-PVT-T/S: 64
channels, 1 head, 9 agents), built for the 56x56 map of a 224-px input, run on square maps from 14x14 up to 256x256
tokens (a 1024-px input at the stage-1 stride 4; their biases are interpolated to each map, as the models do at
other input sizes), against softmax attention of the same width and heads (``qkv`` -> SDPA -> ``proj``). The
measurement is :mod:`bench.linear`'s (forward time, ratio, peak live bytes of one forward, growth per step,
crossover: the first map where agent attention is faster)::

    python -m bench.agent                                  # CPU float32, maps 14..256
    python -m bench.agent --device cuda --dtype float16 --max-softmax-tokens 65536

Softmax attention runs up to ``--max-softmax-tokens`` (default 112x112: its time grows quadratically).
"""
from __future__ import annotations

from . import linear
from .linear import LinearAttn

SIDES = (14, 28, 56, 112, 224, 256)


def _swin_build(dim, num_heads, device=None, dtype=None):
    from zoo.layers import AgentAttention
    return AgentAttention(dim, num_heads, agent_num=9, resolution=56, device=device, dtype=dtype)


def _pvt_build(dim, num_heads, device=None, dtype=None):
    from zoo.layers import AgentSpatialReductionAttentionCl
    return AgentSpatialReductionAttentionCl(dim, num_heads, agent_num=9, resolution=56, device=device, dtype=dtype)


AGENTS = {
    'agent_swin': LinearAttn(96, 3, _swin_build, lambda mod, x: mod(x), 'Agent-Swin-T stage 1, 9 agents'),
    'agent_pvt': LinearAttn(64, 1, _pvt_build, lambda mod, x: mod(x), 'Agent-PVT-T/S stage 1, 9 agents'),
}


def main(argv=None):
    linear.REGISTRY.update(AGENTS)
    argv = list(argv) if argv is not None else None
    import sys
    args = sys.argv[1:] if argv is None else argv
    if '--attn' not in args:
        args = ['--attn', *AGENTS, *args]
    if '--sides' not in args:
        args = ['--sides', *map(str, SIDES), *args]
    return linear.main(args)


if __name__ == '__main__':
    raise SystemExit(main())
