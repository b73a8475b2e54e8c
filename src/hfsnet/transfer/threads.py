"""Running small linear algebra on one thread."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block, then restore the thread count.

    An SGD head's steps are many small matmuls. Handing each to a second OpenMP thread saves
    little, and on a shared, oversubscribed CPU waiting for that thread dominates (measured with
    load average 6 on 2 cores: an SGD epoch over 5,000 x 600 descriptors 3.4 s on two threads vs
    0.02 s on one). Ridge's few large decompositions run on every thread (``fit_ridge``).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
