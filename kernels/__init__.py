"""Pure tensor ops of the zoo: no nn.Module, no timm, no Lightning.

* :mod:`kernels.neighborhood`: neighborhood attention (``na1d``, ``na2d``, ``na3d``).
"""
from .neighborhood import na1d, na2d, na3d, neighborhood_attention

__all__ = ['na1d', 'na2d', 'na3d', 'neighborhood_attention']
from .routing import routed_attention  # noqa: E402

__all__ += ['routed_attention']
