"""Shared nn.Module blocks of the zoo (flat re-exports, one concept per file)."""
from .attention import RpbAttention2d, relative_position_index_2d
from .downsample import ConvDownsampleCl, PatchMergingCl
from .neighborhood import NeighborhoodAttention2d, na_pad_size
from .stems import ConvStemCl, PatchEmbedCl
