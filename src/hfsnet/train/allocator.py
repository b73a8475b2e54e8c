"""Keep freed memory in the process: glibc's defaults make every batch's activations fresh pages.

glibc serves a block of at least its mmap threshold (128 KiB, raised adaptively to at most
32 MiB) with its own ``mmap`` and unmaps it on free, and it trims more than 128 KiB of free
memory off the heap's top. A network's activations are such blocks (EfficientNet-Lite0's first
maps at 64 px and 500 images: 65 MB each), so each batch maps, zero-fills and page-faults them
anew: the frozen feature pass spent as much time in the kernel as in the convolutions.
``benchmarks/feature_pass.py --allocators retain,system`` on the 2-core AVX2 EPYC (quiet,
fp32, batch 500, results/feature_pass-allocator-epyc-avx2.json): 64 px 370 img/s with 0.89 M
page faults per 1,000 images under the defaults, 866 img/s and none retained
(docs/performance.md section 7).

Raising both thresholds to :data:`RETAIN_BYTES` keeps freed blocks in the heap for the next
batch (what PyTorch's CUDA caching allocator does on a GPU). The price: up to that much freed
memory stays resident until the process exits. ``HFSNET_MALLOC=system`` leaves glibc's
defaults, and a ``GLIBC_TUNABLES`` that sets any ``glibc.malloc`` tunable is respected as is.
"""

from __future__ import annotations

import ctypes
import os

from hfsnet.errors import HfsnetError

RETAIN_BYTES = 1 << 30
# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
ENV = "HFSNET_MALLOC"
CHOICES = ("retain", "system")
_in_effect = "system"


class AllocatorError(HfsnetError):
    """A bad ``HFSNET_MALLOC``."""


def glibc_version() -> str | None:
    """``"2.36"`` under glibc, None elsewhere (musl, macOS, Windows)."""
    try:
        name, _, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
    except (AttributeError, ValueError, OSError):
        return None
    return version if name == "glibc" else None


def allocator_mode(environ: dict[str, str] | None = None) -> str:
    """``retain`` unless ``HFSNET_MALLOC=system`` asks for glibc's defaults, the user's
    ``GLIBC_TUNABLES`` already tunes malloc, or the C library is not glibc."""
    env = os.environ if environ is None else environ
    choice = env.get(ENV, "retain")
    if choice not in CHOICES:
        raise AllocatorError(f"environment variable {ENV}={choice!r}: expected one of "
                             f"{', '.join(CHOICES)}")
    if choice == "system" or "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return "system"
    return "retain" if glibc_version() else "system"


def retain_freed_memory(limit: int = RETAIN_BYTES) -> str:
    """Keep freed blocks of up to ``limit`` bytes for reuse, process-wide, where
    :func:`allocator_mode` allows; returns the mode in effect (``retain`` or ``system``).
    Idempotent; every ``hfsnet`` command calls it first."""
    global _in_effect
    if allocator_mode() == "retain":
        mallopt = ctypes.CDLL(None).mallopt
        # both: with the mmap threshold raised alone, glibc still trimmed the freed blocks off
        # the heap's top, and the next batch faulted them in again
        if mallopt(M_TRIM_THRESHOLD, limit) and mallopt(M_MMAP_THRESHOLD, limit):
            _in_effect = "retain"
    return _in_effect


def allocator_in_effect() -> str:
    """``retain`` once :func:`retain_freed_memory` has tuned this process, else ``system``:
    what run records and benchmark rows report."""
    return _in_effect
