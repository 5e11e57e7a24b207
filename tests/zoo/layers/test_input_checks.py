"""Forward inputs of the shared layers: a tensor of another dtype than the parameters (float64, int64) is a
``TypeError`` naming ``x``, a wrong channel count or rank a ``ValueError`` with the expected shape, and where a layer
cannot attend over nothing an empty batch a ``ValueError``, before any kernel sees them.

Each case failed before with a ``RuntimeError`` from deep inside (``mat1 and mat2 must have the same dtype``, ``Input
type (double) and bias type (float)``, ``mixed dtype (CPU)``, ``cannot reshape tensor of 0 elements``, ``permute
(sparse_coo)``, ``expected input[1, 4, 64, 64] to have 3 channels``), found by mutating the inputs the tiny models
feed their layers.
"""
import pytest
import torch
import torch.nn as nn

from zoo.layers import (
    AgentAttention,
    AgentSpatialReductionAttentionCl,
    BiLevelRoutingAttention,
    BiLevelRoutingAttention2d,
    ConvDownsample2d,
    ConvDownsampleCl,
    ConvFfnCl,
    ConvStem2d,
    ConvStemCl,
    Cpe2d,
    CpeCl,
    DwConv2d,
    DwConvCl,
    HiLoAttentionCl,
    MbConvBlock2d,
    NeighborhoodAttention2d,
    PartitionAttentionCl,
    PatchEmbed2d,
    PatchEmbedCl,
    PatchMergingCl,
    PointwiseConv2d,
    PreNormBlock2d,
    PreNormBlockCl,
    QkvLinear,
    RegionRouter,
    RpbAttention2d,
    SpatialReductionAttentionCl,
)

NHWC, NCHW = (1, 8, 8, 16), (1, 16, 8, 8)
IMAGE = (1, 3, 16, 16)
# name: (layer factory, input shape, channel axis, the layer refuses an empty batch)
LAYERS = {
    'agent': (lambda: AgentAttention(16, 2, agent_num=4, resolution=(8, 8)), NHWC, -1, True),
    'agent_sr': (lambda: AgentSpatialReductionAttentionCl(16, 2, agent_num=4, resolution=(8, 8)), NHWC, -1, True),
    'bra': (lambda: BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=2), NHWC, -1, True),
    'bra2d': (lambda: BiLevelRoutingAttention2d(16, num_heads=2, n_win=2, topk=2), NCHW, 1, True),
    'hilo': (lambda: HiLoAttentionCl(16, num_heads=2), NHWC, -1, True),
    'na': (lambda: NeighborhoodAttention2d(16, 2, kernel_size=3), NHWC, -1, False),
    'partition': (lambda: PartitionAttentionCl(16, dim_head=8, partition_size=(4, 4)), NHWC, -1, False),
    'rpb': (lambda: RpbAttention2d(16, 2, grid_size=(8, 8)), NHWC, -1, False),
    'sra': (lambda: SpatialReductionAttentionCl(16, 2, sr_ratio=2), NHWC, -1, True),
    'block_cl': (lambda: PreNormBlockCl(16, NeighborhoodAttention2d, attn_kwargs=dict(num_heads=2, kernel_size=3)),
                 NHWC, -1, False),
    'block_2d': (lambda: PreNormBlock2d(16, BiLevelRoutingAttention2d,
                                        attn_kwargs=dict(num_heads=2, n_win=2, topk=2)), NCHW, 1, True),
    'conv_ffn': (lambda: ConvFfnCl(16, 32), NHWC, -1, False),
    'mbconv': (lambda: MbConvBlock2d(16, 16), NCHW, 1, False),
    'pointwise': (lambda: PointwiseConv2d(16, 32), NCHW, 1, False),
    'qkv': (lambda: QkvLinear(16, 8), NHWC, -1, False),
    'dwconv': (lambda: DwConv2d(16, 3), NCHW, 1, False),
    'dwconv_cl': (lambda: DwConvCl(16, 3), NHWC, -1, False),
    'cpe': (lambda: Cpe2d(16, 3), NCHW, 1, False),
    'cpe_cl': (lambda: CpeCl(16, 3), NHWC, -1, False),
    'downsample_cl': (lambda: ConvDownsampleCl(16, 32), NHWC, -1, False),
    'downsample_2d': (lambda: ConvDownsample2d(16, 32), NCHW, 1, False),
    'merging': (lambda: PatchMergingCl(16, 32), NHWC, -1, False),
    'stem_cl': (lambda: ConvStemCl(3, 16), IMAGE, 1, False),
    'stem_2d': (lambda: ConvStem2d(3, 16), IMAGE, 1, False),
    'patch_cl': (lambda: PatchEmbedCl(4, 3, 16), IMAGE, 1, False),
    'patch_2d': (lambda: PatchEmbed2d(4, 3, 16), IMAGE, 1, False),
}


@pytest.mark.parametrize('name', sorted(LAYERS))
def test_layer_names_bad_inputs(name):
    factory, shape, channel_axis, refuses_empty = LAYERS[name]
    torch.manual_seed(0)
    layer = factory().eval()
    x = torch.randn(shape)
    with torch.no_grad():
        layer(x)  # the valid input runs
        for dtype in (torch.float64, torch.int64):
            with pytest.raises(TypeError, match=rf'x must (have the dtype of the parameters|be a floating-point).*'
                                                rf'{str(dtype).split(".")[1]}'):
                layer(x.to(dtype))
        wider = torch.cat([x, x.narrow(channel_axis, 0, 1)], channel_axis)
        with pytest.raises(ValueError, match=r'x must have shape \[B, .*got \('):
            layer(wider)
        if len(shape) == 4:
            with pytest.raises(ValueError, match=r'x must have shape'):
                layer(x[0])
        if refuses_empty:
            with pytest.raises(ValueError, match=r'x must be non-empty'):
                layer(x[:0])


def test_region_router_names_bad_descriptors():
    router = RegionRouter(8, topk=2)
    q, k = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    router(q, k)
    with pytest.raises(ValueError, match=r'q_r and k_r must be \[B, nR, 8\] and \[B, nRk, 8\]'):
        router(q, torch.randn(1, 4, 9))
    with pytest.raises(ValueError, match=r'q_r and k_r must be'):
        router(q[0], k[0])
    with pytest.raises(TypeError, match=r'q_r and k_r must be floating point, of one dtype, got torch.float64 and '
                                        r'torch.float32'):
        router(q.double(), k)


def test_pointwise_out_scale_dtype_is_named():
    conv = PointwiseConv2d(16, 32)
    x = torch.randn(NCHW).contiguous(memory_format=torch.channels_last)
    with pytest.raises(TypeError, match=r'out_scale must have the dtype of the parameters'):
        conv(x, torch.ones(32, dtype=torch.float64))


def test_block_input_check_under_autocast():
    """Under CPU autocast a bfloat16 map is taken (autocast casts it), as the models take their images."""
    block = PreNormBlockCl(16, nn.Identity, mlp_ratio=2.0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert block(torch.randn(NHWC, dtype=torch.bfloat16)).shape == NHWC
