"""Peak training memory and step time of dense stages, plain vs memory-efficient, in one run.

    .venv/bin/python benchmarks/memory.py [--models hfs-bc-100-12,hfs-bc-250-24] [--steps 3]

For each model: the measured peak memory of one training step (batch 64, 3x32x32, fp32,
AdamW; ``hfsnet.analysis.memory`` measures it in a fresh child process), and the median step
time over ``--steps`` timed steps, the plain and the memory-efficient variant interleaved
step by step so that machine noise hits both alike. Prints a table and writes
``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hfsnet.analysis.memory import StepSpec, measure_peak_memory
from hfsnet.models import create_model

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
BATCH = 64


def step_timer(name: str, memory_efficient: bool):
    """A closure running one AdamW training step of ``name``; returns its wall seconds."""
    torch.manual_seed(0)
    model = create_model(name, memory_efficient=memory_efficient)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))

    def step() -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    return step


def step_times(name: str, steps: int) -> dict[bool, float]:
    """Median step seconds of both variants, interleaved after one warm-up step each."""
    timers = {eff: step_timer(name, eff) for eff in (False, True)}
    for timer in timers.values():
        timer()
    samples: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(steps):
        for eff, timer in timers.items():
            samples[eff].append(timer())
    return {eff: statistics.median(s) for eff, s in samples.items()}


def measure(name: str, steps: int) -> dict:
    peaks = {eff: measure_peak_memory(StepSpec(model=name, batch_size=BATCH,
                                               model_options={"memory_efficient": eff}))
             for eff in (False, True)}
    times = step_times(name, steps)
    plain, efficient = peaks[False].peak_bytes, peaks[True].peak_bytes
    return {
        "model": name,
        "params": sum(p.numel() for p in create_model(name).parameters()),
        "peak_bytes_plain": plain,
        "peak_bytes_efficient": efficient,
        "memory_ratio": efficient / plain,
        "step_seconds_plain": times[False],
        "step_seconds_efficient": times[True],
        "time_ratio": times[True] / times[False],
        "method": peaks[False].method,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="hfs-bc-100-12,hfs-bc-250-24")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = [measure(name, args.steps) for name in args.models.split(",")]
    print(f"{'model':16s} {'params':>10s} {'peak plain':>11s} {'peak eff.':>10s} {'mem':>6s} "
          f"{'step plain':>11s} {'step eff.':>10s} {'time':>6s}")
    for r in rows:
        print(f"{r['model']:16s} {r['params']:>10,d} {r['peak_bytes_plain'] / 2**20:>9.0f}Mi "
              f"{r['peak_bytes_efficient'] / 2**20:>8.0f}Mi {r['memory_ratio']:>6.2f} "
              f"{r['step_seconds_plain']:>10.2f}s {r['step_seconds_efficient']:>9.2f}s "
              f"{r['time_ratio']:>6.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "batch_size": BATCH, "input": [3, 32, 32], "precision": "fp32", "optimizer": "adamw",
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
