"""PartitionAttentionCl and RelPosBiasTf (MaxViT's block / grid attention): timm's layers where timm runs, and an
explicit per-window reference (real tokens only) at every other map size."""
from functools import partial

import pytest
import torch
from timm.layers.pos_embed_rel import RelPosBiasTf as TimmRelPosBiasTf
from timm.models.maxxvit import AttentionCl, grid_partition, grid_reverse, window_partition, window_reverse

from zoo.layers import PartitionAttentionCl, RelPosBiasTf


def _randomized(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn_like(p) * (1. if 'relative_position' in name else 0.1))
    return module


def test_rel_pos_bias_tf_equals_timm():
    ours = _randomized(RelPosBiasTf((5, 7), num_heads=3))
    ref = TimmRelPosBiasTf((5, 7), num_heads=3)
    ref.load_state_dict(ours.state_dict())
    assert ours.relative_position_bias_table.shape == (3, 9, 13)
    torch.testing.assert_close(ours.get_bias(), ref.get_bias(), rtol=0, atol=0)
    attn = torch.randn(2, 3, 35, 35)
    torch.testing.assert_close(ours(attn), ref(attn))


@pytest.mark.parametrize('size', [(5, 7), (3, 7), (2, 4), (1, 1)])
def test_rel_pos_bias_tf_key_minus_query_and_one_hot_path(size):
    rel = _randomized(RelPosBiasTf((5, 7), num_heads=2))
    table = rel.relative_position_bias_table
    bias = rel.get_bias(size)
    coords = [(y, x) for y in range(size[0]) for x in range(size[1])]
    expected = torch.stack([torch.stack([table[:, yk - yq + 4, xk - xq + 6] for yk, xk in coords], -1)
                            for yq, xq in coords], 1)
    torch.testing.assert_close(bias, expected, rtol=0, atol=0)
    torch.testing.assert_close(rel.get_bias(size, one_hot=True), bias, rtol=0, atol=0)


@pytest.mark.parametrize('head_first', [False, True])
@pytest.mark.parametrize('partition_type', ['block', 'grid'])
def test_equals_timm_where_the_partition_divides(partition_type, head_first):
    ours = _randomized(PartitionAttentionCl(64, (7, 4), partition_type, dim_head=16, head_first=head_first))
    ref = AttentionCl(64, 64, dim_head=16, head_first=head_first,
                      rel_pos_cls=partial(TimmRelPosBiasTf, window_size=(7, 4)))
    ref.load_state_dict(ours.state_dict())
    part, rev = (window_partition, window_reverse) if partition_type == 'block' else (grid_partition, grid_reverse)
    x = torch.randn(2, 14, 12, 64)
    expected = rev(ref(part(x, (7, 4))), (7, 4), (14, 12))
    for fused in (True, False):
        ours.fused_attn = fused
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


def _windows(partition_type, part, padded):
    """Per window, the ``(row, col, window_row, window_col)`` of its tokens in the padded map."""
    (ph, pw), (Hp, Wp) = part, padded
    nh, nw = Hp // ph, Wp // pw
    if partition_type == 'block':
        return [[(i * ph + u, j * pw + v, u, v) for u in range(ph) for v in range(pw)]
                for i in range(nh) for j in range(nw)]
    return [[(i + u * nh, j + v * nw, u, v) for u in range(ph) for v in range(pw)]
            for i in range(nh) for j in range(nw)]


def _explicit(attn: PartitionAttentionCl, x: torch.Tensor) -> torch.Tensor:
    """Attention of every real token over the real tokens of its window of the padded map (the spec)."""
    B, H, W, C = x.shape
    part = tuple(min(p, s) for p, s in zip(attn.partition_size, (H, W)))
    padded = tuple(-(-s // p) * p for s, p in zip((H, W), part))
    wh, ww = attn.partition_size
    table = attn.rel_pos.relative_position_bias_table
    qkv = attn.qkv(x)
    out = torch.zeros(B, H, W, C)
    for b in range(B):
        for window in _windows(attn.partition_type, part, padded):
            real = [t for t in window if t[0] < H and t[1] < W]
            q, k, v = torch.stack([qkv[b, y, x_] for y, x_, _, _ in real]).view(
                len(real), 3, attn.num_heads, attn.dim_head).unbind(1)
            logits = torch.einsum('qhd,khd->hqk', q * attn.scale, k)
            bias = torch.stack([torch.stack([table[:, kk[2] - qq[2] + wh - 1, kk[3] - qq[3] + ww - 1] for kk in real],
                                            -1) for qq in real], 1)
            o = torch.einsum('hqk,khd->qhd', (logits + bias).softmax(-1), v).reshape(len(real), C)
            for n, (y, x_, _, _) in enumerate(real):
                out[b, y, x_] = o[n]
    return attn.proj(out)


@pytest.mark.parametrize('partition_type', ['block', 'grid'])
@pytest.mark.parametrize('size', [(10, 3), (7, 9), (8, 8), (1, 5), (5, 13)], ids=str)
def test_any_map_size_masks_the_padding(partition_type, size):
    attn = _randomized(PartitionAttentionCl(32, 4, partition_type, dim_head=8))
    x = torch.randn(2, *size, 32)
    expected = _explicit(attn, x)
    for fused in (True, False):
        attn.fused_attn = fused
        out = attn(x)
        assert out.shape == x.shape
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


@pytest.mark.parametrize('partition_type', ['block', 'grid'])
@pytest.mark.parametrize('partition', [(7, 7), (4, 6)])
@pytest.mark.parametrize('size', [(3, 5), (5, 9), (7, 7), (12, 6), (17, 10)])
def test_full_partition_path_equals_eager(partition_type, partition, size):
    """The path taken under torch.export (ONNX with a dynamic image size) never shrinks the partition: it pads the
    map to it and masks the padded keys. Same values as the eager forward at maps smaller than, equal to and larger
    than the partition."""
    torch.manual_seed(0)
    attn = _randomized(PartitionAttentionCl(32, partition, partition_type, dim_head=16)).eval()
    x = torch.randn(2, *size, 32) * 3
    with torch.no_grad():
        torch.testing.assert_close(attn._forward(x, True), attn(x), atol=1e-5, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match='dim_head'):
        PartitionAttentionCl(48, 7, dim_head=32)
    with pytest.raises(ValueError, match='partition_size'):
        PartitionAttentionCl(64, 0)
    with pytest.raises(ValueError, match='partition_type'):
        PartitionAttentionCl(64, 7, 'shifted')
    with pytest.raises(ValueError, match=r'\[B, H, W, 64\]'):
        PartitionAttentionCl(64, 7)(torch.randn(1, 64, 7, 7))
    with pytest.raises(ValueError, match='window_size'):
        RelPosBiasTf(0, 2)
    with pytest.raises(ValueError, match='size'):
        RelPosBiasTf(4, 2).get_bias((5, 4))
