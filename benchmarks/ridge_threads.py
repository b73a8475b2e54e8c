"""Seconds of a ridge head fit on existing feature caches, on one thread against torch's default.

    .venv/bin/python benchmarks/ridge_threads.py CACHE_DIR[=OPTIONS] ... [--threads 1,2]
        [--repeats 2] [--results PATH]

Each argument is a cache directory (the one holding ``manifest.json``, e.g. an ``hfsnet adapt``
run's ``feature-cache/<digest>``), optionally with ``=`` and head options as JSON
(``{"expand": 2048}``: ``hfsnet.transfer.fit.HeadOptions`` fields). Every cache is fitted
``--repeats`` times at each thread count, the counts interleaved; the chosen strength and the
largest weight difference against the first count's fit show that the threads change the time,
not the head. EfficientNet-Lite0's stages are the trunk (the caches ``adapt`` builds). Writes
``benchmarks/results/ridge_threads.json`` with the load average before and after: run it alone.
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

from hfsnet.errors import HfsnetError
from hfsnet.models import create_model
from hfsnet.train.runtime import cpu_description
from hfsnet.transfer.fit import HeadOptions, fit_cached_head
from hfsnet.transfer.store import open_cache

RESULTS = Path(__file__).resolve().parent / "results" / "ridge_threads.json"


def bench_cache(path: Path, options: dict, threads: list[int], repeats: int,
                channels: list[int]) -> dict:
    cache = open_cache(path)
    seconds: dict[int, list[float]] = {t: [] for t in threads}
    reference, alphas, diff = None, set(), 0.0
    for _ in range(repeats):
        for count in threads:
            torch.set_num_threads(count)
            start = time.perf_counter()
            head, details = fit_cached_head(cache, channels, HeadOptions(**options))
            seconds[count].append(time.perf_counter() - start)
            weight = head.classifier.weight.detach().clone()
            reference = weight if reference is None else reference
            diff = max(diff, float((weight - reference).abs().max()))
            alphas.add(details["alpha"])
    return {"cache": str(path), "options": options, "rows": len(cache.labels("train")),
            "width": cache.width, "seconds": {str(t): s for t, s in seconds.items()},
            "median_seconds": {str(t): statistics.median(s) for t, s in seconds.items()},
            "alphas": sorted(alphas), "max_weight_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caches", nargs="+", help="CACHE_DIR or CACHE_DIR=JSON head options")
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    channels = create_model("efficientnet-lite0").stage_channels()
    load_before = os.getloadavg()
    results = []
    for item in args.caches:
        path, _, text = item.partition("=")
        try:
            options = json.loads(text or "{}")
            HeadOptions(**options).validate()
            results.append(bench_cache(Path(path), options, threads, args.repeats, channels))
        except (ValueError, TypeError, HfsnetError) as err:  # JSON, unknown field, bad cache
            print(f"ridge_threads.py: {item}: {err}", file=sys.stderr)
            sys.exit(2)
        r = results[-1]
        times = ", ".join(f"{t} thread(s) {s:.2f} s" for t, s in r["median_seconds"].items())
        print(f"{path} {r['options']} ({r['rows']} x {r['width']}): {times}; strengths "
              f"{r['alphas']}, max weight difference {r['max_weight_diff']:.2g}", flush=True)
    report = {"command": "benchmarks/ridge_threads.py " + " ".join(sys.argv[1:]),
              "cpu": cpu_description(), "torch": torch.__version__,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "results": results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average {load_before} -> {report['load_average_after']}; wrote {args.results}")


if __name__ == "__main__":
    main()
