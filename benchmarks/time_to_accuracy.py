"""Wall time to test accuracy of the fast presets on CIFAR-10, over several seeds.

    .venv/bin/python benchmarks/time_to_accuracy.py [--presets fast,fast-long] [--seeds 0,1,2,3,4]
        [--epochs N] [--threads N] [--device auto|cpu|cuda] [--data PATH] [--append]

Every (preset, seed) is one ``hfsnet train --recipe PRESET --seed SEED`` process, timed from its
start to its exit, right after it prints the final test accuracy (the decode cache is filled
first, so no run pays for JPEG decoding). The table lists each run; its "time to X%" columns
hold the run's wall seconds if it reached X%, and the summary gives the accuracy distribution
per preset and how many seeds reached each threshold. The 1-minute load average before each run
is recorded: numbers taken while other jobs load the machine are contended numbers.

Results go to ``benchmarks/results/time_to_accuracy.json`` (``--results`` to change), run
directories to ``runs/time_to_accuracy/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hfsnet.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "time_to_accuracy.json"
DEFAULT_DATA = "../shared/datasets/cifar10-jpg.tar.gz"
THRESHOLDS = (0.80, 0.85, 0.90, 0.93)


def run_once(preset: str, seed: int, args: argparse.Namespace) -> dict[str, object]:
    """One timed training process; returns its row of the table."""
    out = ROOT / "runs" / "time_to_accuracy" / f"{preset}-seed{seed}"
    command = [sys.executable, "-m", "hfsnet", "train", "--recipe", preset, "--seed", str(seed),
               "--data", args.data, "--out", str(out), "--device", args.device, "--json",
               "--quiet"]
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    acc = result["test_acc"]
    return {"preset": preset, "seed": seed, "epochs": result["epochs"], "wall_seconds": wall,
            "train_seconds": result["train_seconds"], "test_acc": acc,
            "images_per_second": result["images_per_second"], "load_before": load,
            **{f"time_to_{round(100 * t)}": wall if acc >= t else None for t in THRESHOLDS}}


def summarize(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    """Per preset: accuracy min/median/mean/max, median wall seconds, seeds per threshold."""
    out = {}
    for preset in dict.fromkeys(r["preset"] for r in rows):
        mine = [r for r in rows if r["preset"] == preset]
        accs = [r["test_acc"] for r in mine]
        out[preset] = {
            "runs": len(mine), "acc_min": min(accs), "acc_median": statistics.median(accs),
            "acc_mean": statistics.fmean(accs), "acc_max": max(accs),
            "wall_median": statistics.median(r["wall_seconds"] for r in mine),
            **{f"reached_{round(100 * t)}": sum(a >= t for a in accs) for t in THRESHOLDS},
        }
    return out


def print_table(rows: list[dict[str, object]], summary: dict[str, dict[str, object]]) -> None:
    names = [f"t{round(100 * t)}%" for t in THRESHOLDS]
    print(f"{'preset':>10} {'seed':>4} {'epochs':>6} {'wall s':>7} {'test acc':>8} "
          + " ".join(f"{n:>6}" for n in names) + f" {'load':>5}")
    for r in rows:
        times = [r[f"time_to_{round(100 * t)}"] for t in THRESHOLDS]
        print(f"{r['preset']:>10} {r['seed']:>4} {r['epochs']:>6} {r['wall_seconds']:>7.1f} "
              f"{100 * r['test_acc']:>7.2f}% "
              + " ".join(f"{t:>6.0f}" if t is not None else f"{'-':>6}" for t in times)
              + f" {r['load_before']:>5.1f}")
    for preset, s in summary.items():
        reached = ", ".join(f"{round(100 * t)}%: {s[f'reached_{round(100 * t)}']}/{s['runs']}"
                            for t in THRESHOLDS)
        print(f"{preset}: test acc min {100 * s['acc_min']:.2f} median "
              f"{100 * s['acc_median']:.2f} mean {100 * s['acc_mean']:.2f} max "
              f"{100 * s['acc_max']:.2f}; median wall {s['wall_median']:.0f}s; seeds reaching "
              f"{reached}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="fast,fast-long")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, help="override the presets' epochs")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the training processes")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --results (a rerun replaces its own)")
    args = parser.parse_args()
    load_dataset(args.data)  # fill the decode cache outside the timed runs
    rows = json.loads(args.results.read_text())["rows"] if args.append else []
    for preset in args.presets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_once(preset, seed, args)
            rows = [r for r in rows if (r["preset"], r["seed"]) != (preset, seed)] + [row]
            print(json.dumps(row), flush=True)
    summary = summarize(rows)
    print_table(rows, summary)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "threads": args.threads, "device": args.device, "data": args.data, "rows": rows,
        "summary": summary,
    }, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
