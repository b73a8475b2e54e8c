"""Device, precision and seeding: the few places where the hardware shows through."""

from __future__ import annotations

import contextlib
import json
import random
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
    """bf16 autocast on CPU and CUDA alike: on AVX-512 BF16 CPUs it runs convs ~2x faster."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
