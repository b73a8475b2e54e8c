"""Seconds to load a dataset from hfsnet's decode cache, its .npy files mapped against read.

    .venv/bin/python benchmarks/decode_load.py [--data SPEC,...] [--per-class 100]
        [--repeats 3] [--results PATH]

Each measurement is a fresh process (the page cache warm, as on any second run) timing
``load_dataset`` and, with ``--per-class``, the few-shot draw ``hfsnet adapt --per-class`` makes
next: what a run pays before its first batch. ``mapped`` is hfsnet's reading
(``numpy.load(mmap_mode="c")``: pages are copied only when an image is gathered); ``read``
loads every array into memory first, as hfsnet did before 2026-12-07. The two alternate. Writes
``benchmarks/results/decode_load.json`` with the load average before and after: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from hfsnet.train.runtime import cpu_description

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results/decode_load.json"
DEFAULT_DATA = str(REPO.parent / "shared/datasets/eurosat-rgb.tar.gz")
MODES = ("mapped", "read")
# The child: mode, spec, per-class (0: none) -> seconds on stdout.
CHILD = """
import sys, time
import numpy as np
import hfsnet.data.cache as cache
mode, spec, per_class = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "read":
    class Eager:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def load(file, mmap_mode=None):
            return np.load(file)

    cache.np = Eager()
from hfsnet.data import load_dataset
from hfsnet.transfer.subsets import few_shot
start = time.perf_counter()
data = load_dataset(spec, seed=0)
if per_class:
    few_shot(data, per_class, 0)
print(time.perf_counter() - start)
"""


def measure(mode: str, spec: str, per_class: int) -> float:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, spec, str(per_class)],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"
        print(f"decode_load.py: --data {spec}: the {mode} load failed: {last}", file=sys.stderr)
        sys.exit(2)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="comma-separated --data specs")
    parser.add_argument("--per-class", type=int, default=100, help="0: the whole dataset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.per_class < 0 or args.repeats < 1:
        parser.error("--per-class: expected >= 0; --repeats: expected >= 1")
    before = os.getloadavg()
    rows = []
    for spec in args.data.split(","):
        measure("mapped", spec, args.per_class)  # decodes on a first run; warms the page cache
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode in MODES:
                seconds[mode].append(measure(mode, spec, args.per_class))
        medians = {mode: statistics.median(s) for mode, s in seconds.items()}
        rows.append({"data": spec, "per_class": args.per_class, "seconds": seconds,
                     "median_seconds": medians,
                     "read_over_mapped": medians["read"] / medians["mapped"]})
        print(f"{spec}: mapped {medians['mapped']:.2f} s, read {medians['read']:.2f} s "
              f"(median of {args.repeats})", flush=True)
    result = {"command": " ".join(sys.argv), "cpu": cpu_description(), "rows": rows,
              "load_average_before": before, "load_average_after": os.getloadavg()}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
