"""Device, precision and seeding: the few places where the hardware shows through."""

from __future__ import annotations

import contextlib
import functools
import json
import random
import time
from typing import Any

import numpy as np
import torch

from hfsnet.errors import HfsnetError


class DeviceError(HfsnetError):
    """A device that this machine does not have."""


def resolve_device(kind: str) -> torch.device:
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(kind)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU and CUDA alike (``precision`` resolved: fp32 or bf16)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"autocast needs a resolved precision (fp32 or bf16), got {precision!r}")
    return contextlib.nullcontext()


# bf16 is chosen when its probe step takes at most this fraction of fp32's: below a 10% gain the
# rounding is not worth it.
BF16_GAIN = 1 / 1.1


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where this device runs it faster than fp32, else fp32; others unchanged.

    The same machine kind has been an AMD EPYC (Zen 4), where a bf16 matmul ran 2.3x fp32's
    rate, and an Intel Xeon without AMX, where the fast presets' bf16 training steps ran at
    0.75-0.78x fp32's (docs/performance.md section 0, benchmarks/precision.py), so the choice
    is measured, not assumed. CUDA: bf16 where the GPU supports it.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    ratio = bf16_step_ratio(torch.get_num_threads())
    return "bf16" if ratio <= BF16_GAIN else "fp32"


@functools.cache
def bf16_step_ratio(threads: int) -> float:
    """Time of a bf16-autocast conv forward + backward over the fp32 one on this CPU (below 1:
    bf16 is faster), best of 3 each after a warm-up; ~0.1 s. ``threads`` keys the cache."""
    del threads  # the probe runs at the current thread count; the argument keys the cache
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(
        memory_format=torch.channels_last)
    x = torch.randn(32, 64, 16, 16, generator=generator).contiguous(
        memory_format=torch.channels_last).requires_grad_()

    def seconds(precision: str) -> float:
        best = float("inf")
        for _ in range(4):  # the first is the warm-up: oneDNN picks its kernels
            start = time.perf_counter()
            with autocast(torch.device("cpu"), precision):
                y = conv(x)
            y.float().sum().backward()
            best = min(best, time.perf_counter() - start)
        return best

    return seconds("bf16") / seconds("fp32")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python/numpy states as JSON, torch's as tensors: dropout masks continue exactly."""
    np_state = np.random.get_state()
    plain = {"python": json.loads(json.dumps(random.getstate())),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return plain, tensors


def set_rng_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["extra.rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("extra.rng.cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
