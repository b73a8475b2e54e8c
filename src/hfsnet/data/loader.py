"""Batches of normalised (and optionally augmented) images: deterministic, resumable, sharded."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .augment import AugmentConfig, augment
from .imageset import ImageSet
from .stats import normalize_affine


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator whose seed is a well-mixed function of the non-negative ints ``key``."""
    seed = np.random.SeedSequence(key).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(seed))


class BatchLoader:
    """Yields (x, y) batches of one ``ImageSet`` for one rank of ``world_size``.

    Epoch ``e`` visits a permutation drawn from a generator seeded by (seed, e) only (identity
    order without ``shuffle``), so any batch can be rebuilt without replaying the ones before it:
    ``epoch(e, start_step=k)`` yields exactly the batches ``k..`` of a full pass, bit for bit.
    Batch ``i`` is augmented with a generator seeded by (seed, e, i, rank).

    With ``world_size`` > 1 the epoch's order is padded by wrapping around to a multiple of
    ``world_size`` (as torch's DistributedSampler does) and rank ``r`` takes the ``r``-th of the
    equal contiguous slices: all ranks together cover every image, and fewer than ``world_size``
    images appear twice.

    The whole split is moved to ``device`` once (uint8; 150 MB for CIFAR-10 train), so batches
    are gathered, augmented and normalised there.
    """

    def __init__(self, data: ImageSet, batch_size: int, *, mean: Sequence[float],
                 std: Sequence[float], shuffle: bool = False, augment: AugmentConfig | None = None,
                 seed: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu", channels_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.scale, self.shift = normalize_affine(mean, std, self.device)

    @property
    def per_rank(self) -> int:
        """Images this rank visits per epoch (padding included)."""
        return math.ceil(len(self.labels) / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """Indices into the split that this rank visits in ``epoch``, in order."""
        count = len(self.labels)
        if self.shuffle:
            order = torch.randperm(count, generator=seeded_generator(self.seed, epoch))
        else:
            order = torch.arange(count)
        padded = order.repeat(math.ceil(self.per_rank * self.world_size / max(count, 1)))
        return padded[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x float32 normalised N x C x H x W, y int64) on the device, for batches
        ``start_step`` .. ``len(self) - 1`` of ``epoch``."""
        order = self.order(epoch).to(self.device)
        for step in range(start_step, len(self)):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self._inputs(self.images[index], epoch, step), self.labels[index]

    def _inputs(self, images: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        if self.augment is not None:
            images = augment(images, self.augment, seeded_generator(self.seed, epoch, step,
                                                                    self.rank))
        x = torch.addcmul(self.shift, images.float(), self.scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
