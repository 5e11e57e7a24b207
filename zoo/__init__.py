"""Efficient-attention vision backbones for timm (the ``attnzoo`` distribution: ``pip install attnzoo``).

``import zoo`` registers every zoo model with timm (``timm.create_model('dinat_mini')``). It never imports
Lightning: training lives in :mod:`zoo.train`. The tensor ops are the separate package :mod:`zoo_kernels`
(the repository's ``kernels/`` folder), importable without timm or Lightning.
"""
__version__ = '0.1.0'  # the single source: pyproject.toml reads it (dynamic version)
DISTRIBUTION = 'attnzoo'  # the name on the package index

from . import layers, models  # noqa: E402  (after the metadata, which setuptools reads without importing)
