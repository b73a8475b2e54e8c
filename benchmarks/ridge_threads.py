"""Seconds of a ridge head fit on existing feature caches: one thread against torch's default,
and keeping the moments `fit-head` saves for ``--add`` against skipping them.

    .venv/bin/python benchmarks/ridge_threads.py CACHE_DIR[=OPTIONS] ... [--threads 1,2]
        [--moments keep,skip] [--repeats 2] [--results PATH]

Each argument is a cache directory (the one holding ``manifest.json``, e.g. an ``hfsnet adapt``
run's ``feature-cache/<digest>``), optionally with ``=`` and head options as JSON
(``{"expand": 2048}``: ``hfsnet.transfer.fit.HeadOptions`` fields). Every cache is fitted
``--repeats`` times at each setting (thread count x moments), the settings interleaved; the
chosen strength and the largest weight difference against the first setting's fit show that
the settings change the time, not the head. The trunk is the one named in the cache's key (its
taps included). Writes ``benchmarks/results/ridge_threads.json`` with the load average before
and after: run it alone.
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
from hfsnet.transfer.fit import HeadOptions, fit_cached_head_with_stats
from hfsnet.transfer.store import open_cache

RESULTS = Path(__file__).resolve().parent / "results" / "ridge_threads.json"


def trunk_channels(cache) -> list[int]:
    """The stage channels of the trunk the cache was built from (its taps included)."""
    trunk = cache.key["trunk"]
    return create_model(trunk["model"], **{**trunk["options"], "pretrained": False}
                        ).stage_channels()


def bench_cache(path: Path, options: dict, threads: list[int], moments: list[str],
                repeats: int) -> dict:
    """Fit seconds per (threads, moments) setting, the settings interleaved."""
    cache = open_cache(path)
    channels = trunk_channels(cache)
    settings = [(t, m) for t in threads for m in moments]
    seconds: dict[str, list[float]] = {f"{t}/{m}": [] for t, m in settings}
    reference, alphas, diff = None, set(), 0.0
    for _ in range(repeats):
        for count, kept in settings:
            torch.set_num_threads(count)
            start = time.perf_counter()
            head, details, _ = fit_cached_head_with_stats(
                cache, channels, HeadOptions(**options), keep_moments=kept == "keep")
            seconds[f"{count}/{kept}"].append(time.perf_counter() - start)
            weight = head.classifier.weight.detach().clone()
            reference = weight if reference is None else reference
            diff = max(diff, float((weight - reference).abs().max()))
            alphas.add(details["alpha"])
    return {"cache": str(path), "options": options, "rows": len(cache.labels("train")),
            "width": cache.width, "seconds": seconds,
            "median_seconds": {k: statistics.median(s) for k, s in seconds.items()},
            "alphas": sorted(alphas), "max_weight_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caches", nargs="+", help="CACHE_DIR or CACHE_DIR=JSON head options")
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}")
    parser.add_argument("--moments", default="skip",
                        help="comma-separated: keep (the Gram matrix `fit-head` saves for "
                        "--add) and/or skip (what adapt fits: none in the dual)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    moments = args.moments.split(",")
    if not set(moments) <= {"keep", "skip"}:
        print(f"ridge_threads.py: --moments: expected keep and/or skip, got {args.moments!r}",
              file=sys.stderr)
        sys.exit(2)
    load_before = os.getloadavg()
    results = []
    for item in args.caches:
        path, _, text = item.partition("=")
        try:
            options = json.loads(text or "{}")
            HeadOptions(**options).validate()
            results.append(bench_cache(Path(path), options, threads, moments, args.repeats))
        except (ValueError, TypeError, HfsnetError) as err:  # JSON, unknown field, bad cache
            print(f"ridge_threads.py: {item}: {err}", file=sys.stderr)
            sys.exit(2)
        r = results[-1]
        times = ", ".join(f"{t} (threads/moments) {s:.2f} s"
                          for t, s in r["median_seconds"].items())
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
