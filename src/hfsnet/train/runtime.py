"""Device, precision and seeding: the few places where the hardware shows through."""

from __future__ import annotations

import contextlib
import json
import platform
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hfsnet.errors import HfsnetError

# The instruction-set extensions that decide what bf16 and wide vectors cost; the same machine
# kind has been a Zen 4 EPYC (avx512_bf16), a Xeon without AMX and an AVX2-only EPYC, all three
# named "AMD EPYC" or "Intel(R) Xeon(R) Processor" alone (docs/performance.md section 0).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


class DeviceError(HfsnetError):
    """A device that this machine does not have."""


def resolve_device(kind: str) -> torch.device:
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(kind)


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has, e.g. "AMD EPYC (avx2)";
    ``cpuinfo``: the text of /proc/cpuinfo (read when None; the platform's name without it)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as file:
                cpuinfo = file.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    have = set(fields.get("flags", "").split())
    flags = [flag for flag in CPU_FLAGS if flag in have]
    return f"{name} ({', '.join(flags)})" if flags else name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU and CUDA alike (``precision`` resolved: fp32 or bf16)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"autocast needs a resolved precision (fp32 or bf16), got {precision!r}")
    return contextlib.nullcontext()


# Where the CPU emulates bf16, bf16 is chosen only when its probe step takes at most this fraction
# of fp32's: below a 10% gain the rounding is not worth it. Where it has bf16 instructions (and the
# presets were measured in bf16), fp32 is chosen only when its step is the faster one.
BF16_GAIN = 1 / 1.1
# The probe's first batch: big enough for oneDNN's batched kernels, small enough that a machine
# that emulates bf16 (10x slower in EfficientNet-Lite0's step on an AVX2-only EPYC) pays ~1 s.
PROBE_BATCH = 4
# At 4 images the kernels' fixed costs blur the difference. On the AVX-512 EPYC five probes of
# hfs-air-s read 0.78-1.04 at batch 4, 0.65-0.82 at 16 and 0.49-0.66 at 64
# (`benchmarks/precision.py --repeats 0 --matmul-size 0 --probe-repeats 5`,
# results/precision-probe-epyc.json), and a fast-long run whose probe read fp32 trained at 2.4x
# the time per epoch. So the probe moves on to the next batch until a reading agrees with what
# the CPU's instructions predict (:func:`agrees_with_cpu`); a disagreeing reading at the last
# batch it affords is timed again and overrules the prediction only if both readings do. Each
# reading is the best of PROBE_PAIRS interleaved fp32/bf16 steps after a warm-up each: contention
# only adds time, so the minimum is the least disturbed step. With busy-loop processes beside it
# (`benchmarks/precision.py ... --probe-repeats 12 --contend N --models air-plain-s,hfs-air-s`,
# results/precision-probe-epyc-contend*.json) it picked fp32 in 0 of 24 probes beside one and
# 4 of 24 beside three; the probe before (best of 2, fp32's steps before bf16's, a cold bf16
# call against warm fp32 ones, one reading deciding) in 5 and 8 of 24 (docs/performance.md 5e).
PROBE_BATCHES = (PROBE_BATCH, 16, 64)
CLEAR_FP32 = 1.33
PROBE_PAIRS = 3
# A batch whose probe would take over this many seconds (the last one's time scaled by the
# batch) is not timed: a big model's probe would cost more time and memory than it saves.
PROBE_SECONDS = 2.0
# A first (untimed, kernel-picking) bf16 call this many times slower than the first fp32 call
# ends the reading: bf16 cannot win (emulated bf16 ran 10x slower on an AVX2-only EPYC).
HOPELESS = 4.0


def resolve_precision(precision: str, device: torch.device, model: torch.nn.Module,
                      input_shape: Sequence[int], *, channels_last: bool = False,
                      timed: bool = True) -> str:
    """``auto``: bf16 where this device runs ``model``'s training step faster than fp32, else
    fp32; others unchanged. ``input_shape``: one image's (channels, height, width).

    ``timed=False`` (what ``--deterministic`` asks for) decides on the CPU by its instruction
    set alone (:func:`native_cpu_bf16`): a timed probe on a loaded machine can read either
    side of BF16_GAIN, and two runs of one command would then train in different precisions.

    The machine kind has been an AMD EPYC with AVX-512 BF16 (a bf16 matmul at 2.3x fp32's
    rate), an Intel Xeon without AMX (the fast presets' bf16 steps at 0.75-0.78x fp32's) and an
    AMD EPYC with AVX2 only (EfficientNet-Lite0's bf16 step at 0.1x: depthwise convolutions and
    emulated bf16; docs/performance.md section 0). Which layers win differs between them, so
    the model itself is timed, not a stand-in layer. CUDA: bf16 where the GPU supports it.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if not timed:
        return "bf16" if native_cpu_bf16() else "fp32"
    native = native_cpu_bf16()
    ratio = probed_bf16_ratio(model, input_shape, channels_last=channels_last, native=native)
    return precision_for(ratio, native=native)


def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX), where the fast presets'
    bf16 steps ran at 0.5-0.8x fp32's time; without them bf16 is emulated (0.1x on the AVX2
    EPYC, docs/performance.md section 0)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def probed_bf16_ratio(model: torch.nn.Module, input_shape: Sequence[int], *,
                      channels_last: bool = False, native: bool) -> float:
    """:func:`bf16_step_ratio` at the first of PROBE_BATCHES, then at the next until a reading
    agrees with the CPU (``native``: :func:`native_cpu_bf16`); a disagreeing reading at the
    biggest batch the probe affords is timed again, and the CPU's prediction wins unless both
    readings overrule it (see PROBE_BATCHES)."""
    lean = min if native else max
    batches = list(PROBE_BATCHES)
    batch = batches.pop(0)
    while True:
        start = time.perf_counter()
        ratio = bf16_step_ratio(model, input_shape, channels_last=channels_last, batch=batch)
        if agrees_with_cpu(ratio, native):
            return ratio
        cost = (time.perf_counter() - start) / batch  # seconds of probe per image
        if not batches or cost * batches[0] > PROBE_SECONDS:
            return lean(ratio, bf16_step_ratio(model, input_shape,
                                               channels_last=channels_last, batch=batch))
        batch = batches.pop(0)


def agrees_with_cpu(ratio: float, native: bool) -> bool:
    """Whether a reading ends the probe: with bf16 instructions any bf16 verdict (small batches
    read high, their fixed costs being the same in both precisions), without them a clear fp32
    one."""
    return precision_for(ratio, native=True) == "bf16" if native else ratio >= CLEAR_FP32


def precision_for(ratio: float, *, native: bool) -> str:
    """The precision ``auto`` takes for a measured bf16/fp32 step-time ``ratio`` on a CPU with
    (``native``) or without bf16 instructions (see BF16_GAIN)."""
    return "bf16" if ratio <= (1.0 if native else BF16_GAIN) else "fp32"


def bf16_step_ratio(model: torch.nn.Module, input_shape: Sequence[int], *,
                    channels_last: bool = False, batch: int = PROBE_BATCH) -> float:
    """Time of ``model``'s forward + backward under bf16 autocast over the fp32 one on the CPU
    (below 1: bf16 is faster), the best of PROBE_PAIRS interleaved steps after a warm-up each,
    on random images. The model runs in eval mode (batch-norm statistics and dropout untouched)
    and its gradients are restored, so the probe leaves no trace."""
    generator = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, *input_shape, generator=generator).contiguous(memory_format=fmt)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in params]
    for param in params:  # backward would accumulate into the stored tensors in place
        param.grad = None
    was_training = model.training
    model.eval()

    def step(precision: str) -> float:
        start = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            out = model(x)
        if out.requires_grad:  # a model with every parameter frozen has no backward to time
            out.float().sum().backward()
        return time.perf_counter() - start

    try:
        cold_fp32, cold_bf16 = step("fp32"), step("bf16")  # warm-ups: oneDNN picks its kernels
        if cold_bf16 > HOPELESS * cold_fp32:
            return cold_bf16 / cold_fp32
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(PROBE_PAIRS):
            for precision, seconds in times.items():
                seconds.append(step(precision))
        return min(times["bf16"]) / min(times["fp32"])
    finally:
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        model.train(was_training)


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
