"""Images per second of the cache's trunk pass (``FrozenTrunk``, batch norms folded,
channels-last) by batch size: what ``--cache-batch-size`` should default to on this CPU.

    .venv/bin/python benchmarks/cache_batch.py [--sizes 32,64] [--batches 16,32,64,128,500]
        [--images 1000] [--repeats 3] [--precision fp32] [--results PATH]

EfficientNet-Lite0 (ImageNet weights) built for each input side, the same random images at
every batch size, the batch sizes interleaved ``--repeats`` times (median reported), the load
average, the CPU and the allocator mode (``hfsnet.train.allocator``: retained as in every
``hfsnet`` command unless ``HFSNET_MALLOC=system``) recorded: run it alone. Writes
``benchmarks/results/cache_batch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from hfsnet.models import create_model
from hfsnet.train.allocator import retain_freed_memory
from hfsnet.train.runtime import cpu_description
from hfsnet.transfer.frozen import FrozenTrunk

RESULTS = Path(__file__).resolve().parent / "results" / "cache_batch.json"


def rate(trunk: FrozenTrunk, images: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    for x in images.split(batch):
        trunk(x)
    return len(images) / (time.perf_counter() - start)


def bench_side(side: int, batches: list[int], n_images: int, repeats: int,
               precision: str) -> dict:
    model = create_model("efficientnet-lite0", image_size=side).eval()
    trunk = FrozenTrunk(model, precision=precision)
    images = torch.randn(n_images, 3, side, side, generator=torch.Generator().manual_seed(side))
    trunk(images[:batches[0]])  # folds and checks on its first call
    rates: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(repeats):
        for b in batches:
            rates[b].append(rate(trunk, images, b))
    median = {b: statistics.median(r) for b, r in rates.items()}
    return {"side": side, "images": n_images, "precision": precision,
            "images_per_second": {str(b): v for b, v in median.items()},
            "all_rates": {str(b): r for b, r in rates.items()},
            "best_batch": max(median, key=median.__getitem__)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64")
    parser.add_argument("--batches", default="16,32,64,128,500")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    allocator = retain_freed_memory()  # as every hfsnet command runs (HFSNET_MALLOC=system: not)
    load_before = os.getloadavg()
    results = [bench_side(int(s), batches, args.images, args.repeats, args.precision)
               for s in args.sizes.split(",")]
    report = {"command": "benchmarks/cache_batch.py " + " ".join(sys.argv[1:]),
              "cpu": cpu_description(), "allocator": allocator, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "results": results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        rates = ", ".join(f"batch {b}: {v:.0f}" for b, v in r["images_per_second"].items())
        print(f"{r['side']} px ({r['precision']}) img/s: {rates}; best batch {r['best_batch']}")
    print(f"load average {load_before} -> {report['load_average_after']}; wrote {args.results}")


if __name__ == "__main__":
    main()
