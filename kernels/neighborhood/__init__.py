"""Neighborhood attention (NA/DiNA) in 1-D, 2-D and 3-D: see ``functional.py`` and ``README.md``."""
from .functional import na1d, na2d, na3d, neighborhood_attention

__all__ = ['na1d', 'na2d', 'na3d', 'neighborhood_attention']
