"""Reproducible randomness for training: a resumable sampler and per-item / per-step seeding.

A resumed run must repeat the losses of an uninterrupted one. Three sources of randomness decide them:

* the order of the samples: :class:`ResumableSampler` draws the permutation of epoch ``e`` from
  ``seed + e`` (like :class:`~torch.utils.data.DistributedSampler`, which it subclasses so that Lightning
  keeps it under DDP instead of wrapping it) and can skip the batches a mid-epoch checkpoint already saw;
* the data augmentation: :class:`SeededDataset` seeds ``torch``, ``random`` and ``numpy`` from
  ``(seed, epoch, index)`` before it loads an item, so the crop an image gets does not depend on the
  worker that loads it, on the number of workers, nor on what ran before;
* drop path, dropout and Mixup/CutMix in the training step: :func:`seed_step` reseeds the generators
  from ``(seed, epoch, batch_idx, rank)`` at every batch (the way JAX folds the step into its key), so
  nothing that ran before a step (a sanity check, a restore, a validation loop) can change it.

The seed is Lightning's global seed (``seed_everything``, the CLI's ``--seed_everything``); without one
the sampler uses 0 and no per-step or per-item reseeding happens.
"""
import os
import random
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ['ResumableSampler', 'SeededDataset', 'global_seed', 'mix_seed', 'seed_all', 'seed_step']


def global_seed() -> Optional[int]:
    """The seed given to ``lightning.seed_everything`` (read from ``PL_GLOBAL_SEED``), or None."""
    value = os.environ.get('PL_GLOBAL_SEED')
    return None if value is None else int(value)


def mix_seed(*values: int) -> int:
    """A 32-bit seed that depends on every value (numpy's SeedSequence hashing, not a sum)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed ``torch`` (all devices), ``random`` and ``numpy`` with one value."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def seed_step(epoch: int, batch_idx: int, rank: int = 0) -> bool:
    """Reseed every generator for one training batch; returns False (and does nothing) without a global seed."""
    seed = global_seed()
    if seed is None:
        return False
    seed_all(mix_seed(seed, 1, epoch, batch_idx, rank))
    return True


class ResumableSampler(DistributedSampler):
    """Epoch-seeded shuffling, sharded over ranks, that can start mid-epoch.

    The order of epoch ``e`` is ``torch.randperm(len(dataset))`` drawn from ``seed + e``; rank ``r`` of ``R``
    takes every ``R``-th index (padded or truncated to equal shards, as :class:`DistributedSampler`).
    :meth:`skip_batches` drops the first batches of the current epoch's shard once, for a resume from a
    checkpoint saved in the middle of an epoch; ``len()`` keeps counting them so Lightning's batch indices stay right.

    Args:
        dataset: the dataset to index (only its length is used).
        num_replicas: world size (1 without distributed training).
        rank: this process's global rank.
        shuffle: draw a new permutation each epoch; False keeps the dataset order.
        seed: base seed; None reads Lightning's global seed (0 when none was set).
        drop_last: drop the tail that does not divide evenly among ranks instead of padding it.
    """

    def __init__(
            self,
            dataset: Sequence,
            num_replicas: int = 1,
            rank: int = 0,
            shuffle: bool = True,
            seed: Optional[int] = None,
            drop_last: bool = False,
    ):
        if seed is None:
            seed = global_seed() or 0
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self._skip = 0
        self._skip_epoch: Optional[int] = None

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        dataset = self.dataset
        if isinstance(dataset, SeededDataset):
            dataset.set_epoch(epoch)

    def skip_batches(self, epoch: int, num_batches: int, batch_size: int) -> None:
        """Skip the first ``num_batches`` batches of ``epoch`` (once; later epochs start at the beginning)."""
        self._skip = num_batches * batch_size
        self._skip_epoch = epoch

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._skip and self._skip_epoch == self.epoch:
            indices = indices[self._skip:]
            self._skip, self._skip_epoch = 0, None
        return iter(indices)


class SeededDataset(Dataset):
    """Wrap a map-style dataset so that item ``i`` of epoch ``e`` is loaded with generators seeded by ``(seed, e, i)``.

    The caller's generator states are restored afterwards, so loading in the main process (``num_workers=0``)
    leaves the training randomness untouched. :class:`ResumableSampler` forwards ``set_epoch`` here; workers
    are started after it (non-persistent workers), so each one sees the right epoch.

    Args:
        dataset: the dataset whose transforms draw random numbers.
        seed: base seed; None reads Lightning's global seed at each item (no reseeding when none was set).
    """

    def __init__(self, dataset: Dataset, seed: Optional[int] = None):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name == 'dataset':  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        seed = self.seed if self.seed is not None else global_seed()
        if seed is None:
            return self.dataset[index]
        states = torch.get_rng_state(), random.getstate(), np.random.get_state()
        torch.default_generator.manual_seed(mix_seed(seed, 2, self.epoch, index))  # CPU only: transforms run there
        random.seed(mix_seed(seed, 3, self.epoch, index))
        np.random.seed(mix_seed(seed, 4, self.epoch, index))
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(states[0])
            random.setstate(states[1])
            np.random.set_state(states[2])
