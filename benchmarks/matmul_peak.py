"""This CPU's bf16 and fp32 matmul throughput: the reference for "fraction of peak" figures.

    .venv/bin/python benchmarks/matmul_peak.py [--size 2048] [--reps 10]

Times ``--reps`` products of two N x N matrices with torch's default threads (after a warm-up)
and writes GFLOP/s (2 N^3 per product) to ``benchmarks/results/matmul_peak.json``. Run it on a
quiet machine: it measures the whole CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "matmul_peak.json"


def gflops(size: int, reps: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: oneDNN picks and caches its kernel
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    result = {"size": args.size, "reps": args.reps, "threads": torch.get_num_threads(),
              "load_average_before": os.getloadavg()[0],
              "bf16_gflops": gflops(args.size, args.reps, torch.bfloat16),
              "fp32_gflops": gflops(args.size, args.reps, torch.float32)}
    print(json.dumps(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
