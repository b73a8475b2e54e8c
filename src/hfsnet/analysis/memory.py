"""Measured peak memory of a training step (forward, backward, optimizer step) at batch B.

The measurement runs in a fresh child process, so nothing the parent allocated (datasets, other
models, allocator caches) leaks into it. The child warms up the kernels with a throwaway model,
takes a baseline, builds the model, optimizer and batch, runs one training step (the optimizer
allocates its state), resets the peak counter and runs a second, steady-state step exactly like
the trainer does. The result is the peak during that second step minus the baseline: weights,
gradients, optimizer state, the batch, activations and temporaries.

On CPU the peak is the kernel's resident-set high-water mark (``VmHWM`` in /proc/self/status,
reset by writing "5" to /proc/self/clear_refs), so it includes allocator slack. On CUDA it is
``torch.cuda.max_memory_allocated`` (tensor bytes; the CUDA context is not counted).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hfsnet.errors import HfsnetError

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_PEAK_RSS = "5"  # clear_refs command: reset VmHWM to the current RSS (Linux >= 4.0)


class MemoryMeasureError(HfsnetError):
    """The peak could not be measured; the message says why and how to skip it."""


@dataclass
class StepSpec:
    """What one training step needs: the model, the batch and the optimizer settings."""

    model: str
    model_options: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (3, 32, 32)
    batch_size: int = 32
    precision: str = "fp32"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    channels_last: bool = False
    device: str = "cpu"


@dataclass
class PeakMemory:
    peak_bytes: int  # peak during a steady-state training step, above the baseline
    state_bytes: int  # weights + gradients + optimizer state after the step (tensor bytes)
    baseline_bytes: int  # process memory (CPU RSS or CUDA allocated) before the model existed
    method: str
    device: str
    batch_size: int
    precision: str
    optimizer: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_peak_memory(spec: StepSpec, *, timeout_s: float = 1800.0) -> PeakMemory:
    """Run two training steps of ``spec`` in a child process and return the measured peak."""
    payload = json.dumps({**asdict(spec), "input_shape": list(spec.input_shape)})
    try:
        done = subprocess.run([sys.executable, "-m", "hfsnet.analysis.memory", payload],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        raise MemoryMeasureError(f"peak memory of {spec.model}: the measuring process ran "
                                 f"over {timeout_s:.0f}s") from err
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise MemoryMeasureError(f"peak memory of {spec.model}: the measuring process "
                                 f"failed: {detail[0]}")
    return PeakMemory(**json.loads(done.stdout.strip().splitlines()[-1]))


def _status_bytes(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise MemoryMeasureError(f"peak memory: {_STATUS} has no {key} line")
    return int(match.group(1)) * 1024


class _CpuMeter:
    """Resident memory from /proc: current RSS, and the high-water mark since the last reset."""

    method = "CPU peak RSS (VmHWM, reset via /proc/self/clear_refs) minus the baseline RSS"

    def __init__(self) -> None:
        if not _CLEAR_REFS.exists():
            raise MemoryMeasureError("peak memory on CPU needs Linux /proc/self/clear_refs "
                                     "(pass --no-memory to skip the measurement)")

    def current(self) -> int:
        return _status_bytes("VmRSS")

    def reset_peak(self) -> None:
        _CLEAR_REFS.write_text(_RESET_PEAK_RSS)

    def peak(self) -> int:
        return _status_bytes("VmHWM")


class _CudaMeter:
    method = "torch.cuda.max_memory_allocated minus the allocated baseline"

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.device = device

    def current(self) -> int:
        self.torch.cuda.synchronize(self.device)
        return self.torch.cuda.memory_allocated(self.device)

    def reset_peak(self) -> None:
        self.torch.cuda.synchronize(self.device)
        self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        self.torch.cuda.synchronize(self.device)
        return self.torch.cuda.max_memory_allocated(self.device)


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _run_child(spec: StepSpec) -> PeakMemory:
    """The child's side: build, step twice, measure. Imports torch only here."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from hfsnet.models import create_model
    from hfsnet.train.optim import ParamGroup, build_optimizer
    from hfsnet.train.runtime import autocast, resolve_device

    device = resolve_device(spec.device)
    meter = _CudaMeter(device) if device.type == "cuda" else _CpuMeter()
    fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
    c, h, w = spec.input_shape

    def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
        group = ParamGroup("all", list(model.parameters()), spec.lr)
        return build_optimizer([group], spec.optimizer, weight_decay=spec.weight_decay,
                               momentum=spec.momentum)

    def step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor) -> None:
        # The trainer's order: forward, loss in fp32, clear gradients, backward, update.
        with autocast(device, spec.precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # Load the conv/linear/optimizer kernels before the baseline, so that code pages and
    # one-time library buffers are not charged to the model.
    warm = nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.Flatten(),
                         nn.Linear(4 * h * w, spec.num_classes))
    warm = warm.to(device, memory_format=fmt)
    warm_x = torch.randn(2, c, h, w, device=device).to(memory_format=fmt)
    warm_y = torch.zeros(2, dtype=torch.long, device=device)
    step(warm, make_optimizer(warm), warm_x, warm_y)
    del warm, warm_x, warm_y

    baseline = meter.current()
    options = {"image_size": h, **spec.model_options}
    model = create_model(spec.model, num_classes=spec.num_classes, in_channels=c, **options)
    model = model.to(device, memory_format=fmt).train()
    optimizer = make_optimizer(model)
    x = torch.randn(spec.batch_size, c, h, w, device=device).to(memory_format=fmt)
    y = torch.randint(0, spec.num_classes, (spec.batch_size,), device=device)
    step(model, optimizer, x, y)
    meter.reset_peak()
    step(model, optimizer, x, y)
    peak = meter.peak()
    optimizer_state = [t for s in optimizer.state.values() for t in s.values()
                       if isinstance(t, torch.Tensor)]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    state = _tensor_bytes(model.parameters()) + _tensor_bytes(grads)
    return PeakMemory(peak_bytes=peak - baseline,
                      state_bytes=state + _tensor_bytes(optimizer_state),
                      baseline_bytes=baseline, method=meter.method, device=str(device),
                      batch_size=spec.batch_size, precision=spec.precision,
                      optimizer=spec.optimizer)


def _child_main(argv: list[str]) -> int:
    values = json.loads(argv[0])
    spec = StepSpec(**{**values, "input_shape": tuple(values["input_shape"])})
    print(json.dumps(_run_child(spec).to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
