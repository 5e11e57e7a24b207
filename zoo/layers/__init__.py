"""Shared nn.Module blocks of the zoo (flat re-exports, one concept per file)."""
from .agent_attention import AgentAttention, AgentSpatialReductionAttentionCl, agent_attention, agent_pool_size
from .attention import RpbAttention2d, relative_position_index_2d
from .block import PreNormBlock2d, PreNormBlockCl
from .deform_merge import DeformConv2dPack, DeformTokenMergeCl
from .downsample import ConvDownsample2d, ConvDownsampleCl, PatchMergingCl
from .flow_attention import FlowAttention, flow_attention_core
from .hilo import HiLoAttentionCl, hilo_head_split
from .inline_attention import InLineAttention, dwconv3x3_per_sample, inline_attention_core
from .mbconv import MbConvBlock2d
from .mlp import ConvFfnCl
from .neighborhood import NeighborhoodAttention2d, na_pad_size
from .partition import grid_partition, grid_reverse, padded_size, window_attn_mask, window_partition, window_reverse
from .partition_attention import PartitionAttentionCl
from .pointwise import PointwiseConv2d, is_channels_last, to_channels_last
from .pos_conv import Cpe2d, CpeCl, DwConv2d, DwConvCl, depthwise_conv2d
from .pos_embed_rel import RelPosBias, rel_pos_table_from_nat
from .pos_embed_rel_tf import RelPosBiasTf
from .rala import RalaAttention2d, Rope2d, apply_rope_2d, rala_core
from .routing import (
    BiLevelRoutingAttention,
    BiLevelRoutingAttention2d,
    QkvLinear,
    RegionRouter,
    gather_routed_attention,
)
from .spatial_reduction import SpatialReductionAttentionCl, spatial_pool_cl
from .stems import ConvStem2d, ConvStemCl, PatchEmbed2d, PatchEmbedCl
