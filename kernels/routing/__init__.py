"""Bi-level routing attention (BiFormer's BRA): see ``functional.py`` and ``README.md``."""
from .functional import routed_attention

__all__ = ['routed_attention']
