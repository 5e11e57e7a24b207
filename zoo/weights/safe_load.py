"""Read weight files without running code from them, pick a weight set, and load it with clear errors.

The public home of the reader that every checkpoint path of the zoo uses (``zoo.weights`` commands and the models'
``pretrained=True`` loader); it lives in :mod:`zoo.models._safe_load` so that the models, a layer below, can use it.
See there for the details: :func:`read_checkpoint`, :func:`select_weights`, :func:`read_weights`, :func:`load_into`.
"""
from zoo.models._safe_load import (
    DEFAULT_WEIGHTS,
    SAFE_GLOBALS,
    WEIGHT_KEYS,
    CheckpointReadError,
    UnsafeCheckpointError,
    load_into,
    read_checkpoint,
    read_weights,
    select_weights,
)

__all__ = ['SAFE_GLOBALS', 'WEIGHT_KEYS', 'DEFAULT_WEIGHTS', 'CheckpointReadError', 'UnsafeCheckpointError',
           'read_checkpoint', 'select_weights', 'load_into', 'read_weights']
