"""Efficient-attention vision backbones for timm.

``import zoo`` registers every zoo model with timm (``timm.create_model('dinat_mini')``). It never imports
Lightning: training lives in :mod:`zoo.train`.
"""
from . import layers, models

__version__ = '0.1.0'
