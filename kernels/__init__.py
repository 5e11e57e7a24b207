"""Pure tensor ops of the zoo: no nn.Module, no timm, no Lightning.

* :mod:`zoo_kernels.neighborhood`: neighborhood attention (``na1d``, ``na2d``, ``na3d``).
* :mod:`zoo_kernels.routing`: bi-level routing attention over routed regions (``routed_attention``).
"""
from .neighborhood import na1d, na2d, na3d, neighborhood_attention
from .routing import routed_attention

__all__ = ['na1d', 'na2d', 'na3d', 'neighborhood_attention', 'routed_attention']
