"""Time to test accuracy on CIFAR-10: our fast presets against the peer, the public record.

    .venv/bin/python benchmarks/time_to_accuracy.py [--presets airbench94,fast,fast-long]
        [--peer airbench94] [--seeds 0,1,2,3,4] [--epochs N] [--threads N]
        [--device auto|cpu|cuda] [--data PATH] [--append] [--train-args "--precision fp32"]
        [--final-only] [--allocator retain|system]

Every (preset, seed) is one ``hfsnet train --recipe PRESET --seed SEED`` process (the decode
cache is filled first, so no run pays for JPEG decoding), with the test set evaluated after
every epoch (``track_test``, through a ``--config`` file: the fast recipes otherwise test only
at the end). Each epoch's test accuracy and training seconds come from the run's
``metrics.jsonl``; times are cumulative *training* seconds, evaluation excluded, as the record
times itself (``airbench94_muon.py`` stops its clock for its per-epoch evaluation), and the
process wall time is recorded beside them. The per-epoch test passes use the recipes' test-time
augmentation, so the wall times are longer than those of plain runs.

With ``--final-only`` the runs test only at the end, as the recipes do, and the wall time is a
user's: process start to printed accuracy. The rung targets (``RUNGS``) are judged on such runs;
each row is labelled by its preset and what the invocation changed (``--epochs``,
``--train-args``, final only), and the summary groups rows by that label.

Reported per variant: each threshold's median seconds to reach it (over the seeds that did) and
how many seeds did; against ``--peer``: the ratio of those medians (preset / peer: below 1 is
faster) and the accuracy at equal time, the preset's at the peer's median training time and the
peer's at the preset's (the accuracy after the last epoch finished within that time). The
1-minute load average before each run is recorded: numbers taken while other jobs load the
machine are contended numbers.

Results go to ``benchmarks/results/time_to_accuracy.json`` (``--results`` to change), run
directories to ``runs/time_to_accuracy/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hfsnet.data import load_dataset
from hfsnet.fsutil import atomic_write_bytes
from hfsnet.train.allocator import CHOICES
from hfsnet.train.runtime import cpu_description

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "time_to_accuracy.json"
RUNS = ROOT / "runs" / "time_to_accuracy"
DEFAULT_DATA = "../shared/datasets/cifar10-jpg.tar.gz"
THRESHOLDS = (0.80, 0.85, 0.90, 0.93)
# Issue 16's rungs: (test accuracy, wall seconds from process start to printed accuracy), judged
# on runs that test only at the end (--final-only), as a user runs them. The top rung (>= 92% in
# <= 20 min) joins when a recipe for it exists.
RUNGS = {"fast": (0.87, 300), "fast-long": (0.905, 720)}

Curve = list[tuple[float, float]]  # (cumulative training seconds, test accuracy) per epoch


def key(threshold: float) -> str:
    return f"seconds_to_{round(100 * threshold)}"


def read_curve(run_dir: Path) -> Curve:
    """Each epoch's cumulative training seconds and test accuracy, from ``metrics.jsonl``."""
    curve, elapsed = [], 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        elapsed += row["seconds"]
        if "test_acc" in row:
            curve.append((elapsed, row["test_acc"]))
    return curve


def time_to(curve: Curve, threshold: float) -> float | None:
    """Training seconds until the first epoch at ``threshold`` or above; None if none is."""
    return next((seconds for seconds, acc in curve if acc >= threshold), None)


def acc_at(curve: Curve, seconds: float) -> float | None:
    """The accuracy after the last epoch finished within ``seconds``; None before the first."""
    done = [acc for t, acc in curve if t <= seconds]
    return done[-1] if done else None


def label(preset: str, args: argparse.Namespace) -> str:
    """The row's variant: the preset and whatever the invocation changed in it."""
    parts = [preset, f"--epochs {args.epochs}" if args.epochs else "", args.train_args,
             "[final only]" if args.final_only else "",
             "[HFSNET_MALLOC=system]" if args.allocator == "system" else ""]
    return " ".join(part for part in parts if part)


def run_name(variant: str) -> str:
    """The variant's run folder: one per label, so a variant's checkpoint is not overwritten by
    the next variant of the same preset (they are re-evaluated later, e.g. with more views)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", variant).strip("-")


def verdict(name: str, s: dict[str, object]) -> str | None:
    """The rung's target against the final-only runs' wall times: how many seeds met both."""
    if name not in RUNGS or not s["final_only_runs"]:
        return None
    acc, seconds = RUNGS[name]
    return (f"target >= {100 * acc:.1f}% in <= {seconds} s wall: met by {s['met']}/"
            f"{s['final_only_runs']}")


def run_once(preset: str, seed: int, args: argparse.Namespace) -> dict[str, object]:
    """One timed training process; returns its row of the table."""
    out = RUNS / f"{run_name(label(preset, args))}-seed{seed}"
    command = [sys.executable, "-m", "hfsnet", "train", "--recipe", preset, "--seed", str(seed),
               "--data", args.data, "--out", str(out), "--overwrite",
               "--device", args.device, "--json", "--quiet"]
    if not args.final_only:
        curves = RUNS / "track_test.json"
        curves.parent.mkdir(parents=True, exist_ok=True)
        curves.write_text(json.dumps({"track_test": True}))
        command += ["--config", str(curves)]
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    command += shlex.split(args.train_args)
    env = {**os.environ, "HFSNET_MALLOC": args.allocator}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # A run that tests only at the end leaves one point: its final accuracy.
    curve = read_curve(out) or [(result["train_seconds"], result["test_acc"])]
    return {"preset": preset, "label": label(preset, args), "seed": seed,
            "train_args": args.train_args,
            "final_only": args.final_only, "epochs": result["epochs"], "wall_seconds": wall,
            "train_seconds": result["train_seconds"], "test_acc": result["test_acc"],
            "images_per_second": result["images_per_second"], "load_before": load,
            # `--precision auto` is timed per run: a probe that read fp32 makes a row 2.4x slower
            # (docs/performance.md 5e), so each row says what ran.
            "precision": result["machine"]["precision"],
            "allocator": result["machine"].get("allocator"),
            "curve": curve, **{key(t): time_to(curve, t) for t in THRESHOLDS}}


def row_label(row: dict[str, object]) -> str:
    return row.get("label", row["preset"])


def recipe_of(rows: list[dict[str, object]], name: str) -> str:
    """The recipe behind a variant's label."""
    return next(r["preset"] for r in rows if row_label(r) == name)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    """Per preset: accuracy min/median/mean/max, median wall and training seconds, and per
    threshold the seeds that reached it and their median seconds to it."""
    out = {}
    for name in dict.fromkeys(row_label(r) for r in rows):
        mine = [r for r in rows if row_label(r) == name]
        accs = [r["test_acc"] for r in mine]
        plain = [r for r in mine if r.get("final_only")]  # all or none: the label says which
        target = RUNGS.get(mine[0]["preset"])
        out[name] = {
            "runs": len(mine), "final_only_runs": len(plain),
            "met": None if target is None else sum(
                r["test_acc"] >= target[0] and r["wall_seconds"] <= target[1] for r in plain),
            "acc_sd": statistics.stdev(accs) if len(accs) > 1 else None,
            "acc_min": min(accs), "acc_median": statistics.median(accs),
            "acc_mean": statistics.fmean(accs), "acc_max": max(accs),
            "wall_median": statistics.median(r["wall_seconds"] for r in mine),
            "train_median": statistics.median(r["train_seconds"] for r in mine),
            **{f"reached_{round(100 * t)}": sum(r[key(t)] is not None for r in mine)
               for t in THRESHOLDS},
            **{key(t): _median([r[key(t)] for r in mine]) for t in THRESHOLDS},
        }
    return out


def against_peer(rows: list[dict[str, object]], summary: dict[str, dict[str, object]],
                 peer: str) -> dict[str, dict[str, object]]:
    """Per preset other than ``peer``: time-to-target ratios (preset / peer, per threshold both
    reached) and the accuracy at equal time, medians over seeds."""
    if peer not in summary:
        return {}
    peer_rows = [r for r in rows if row_label(r) == peer]
    out = {}
    for preset, s in summary.items():
        if preset == peer:
            continue
        mine = [r for r in rows if row_label(r) == preset]
        ratios = {}
        for t in THRESHOLDS:
            ours, theirs = s[key(t)], summary[peer][key(t)]
            ratios[f"ratio_to_{round(100 * t)}"] = (ours / theirs if ours is not None
                                                    and theirs is not None else None)
        out[preset] = {
            **ratios,
            "acc_at_peer_time": _median([acc_at(r["curve"], summary[peer]["train_median"])
                                         for r in mine]),
            "peer_acc_at_our_time": _median([acc_at(r["curve"], s["train_median"])
                                             for r in peer_rows]),
        }
    return out


def _cell(value: float | None, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


def print_table(rows: list[dict[str, object]], summary: dict[str, dict[str, object]],
                versus: dict[str, dict[str, object]], peer: str) -> None:
    names = [f"t{round(100 * t)}%" for t in THRESHOLDS]
    print(f"{'variant':>10} {'seed':>4} {'epochs':>6} {'wall s':>7} {'train s':>7} "
          f"{'test acc':>8} " + " ".join(f"{n:>6}" for n in names) + f" {'load':>5} precision")
    for r in rows:
        print(f"{row_label(r):>10} {r['seed']:>4} {r['epochs']:>6} {r['wall_seconds']:>7.1f} "
              f"{r['train_seconds']:>7.1f} {100 * r['test_acc']:>7.2f}% "
              + " ".join(f"{_cell(r[key(t)], '.0f'):>6}" for t in THRESHOLDS)
              + f" {r['load_before']:>5.1f} {r.get('precision', '-')}")
    for preset, s in summary.items():
        reached = ", ".join(f"{round(100 * t)}%: {s[f'reached_{round(100 * t)}']}/{s['runs']}"
                            + ("" if s[key(t)] is None else f" in {s[key(t)]:.0f}s")
                            for t in THRESHOLDS)
        print(f"{preset}: test acc min {100 * s['acc_min']:.2f} median "
              f"{100 * s['acc_median']:.2f} mean {100 * s['acc_mean']:.2f} max "
              f"{100 * s['acc_max']:.2f}; median training {s['train_median']:.0f}s, wall "
              f"{s['wall_median']:.0f}s; seeds reaching {reached}")
        rung = verdict(recipe_of(rows, preset), s)
        if rung:
            print(f"{preset}: {rung}")
    for preset, v in versus.items():
        ratios = ", ".join(f"{round(100 * t)}%: {_cell(v[f'ratio_to_{round(100 * t)}'], '.2f')}"
                           for t in THRESHOLDS)
        print(f"{preset} vs {peer}: time to target (x {peer}'s) {ratios}; at {peer}'s time "
              f"{preset} has {_percent(v['acc_at_peer_time'])}, at {preset}'s time {peer} has "
              f"{_percent(v['peer_acc_at_our_time'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="airbench94,fast,fast-long")
    parser.add_argument("--peer", default="airbench94",
                        help="the preset the others are compared with (default: the record)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, help="override the presets' epochs")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the training processes")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--train-args", default="",
                        help="more `hfsnet train` flags for every run, e.g. '--precision fp32'")
    parser.add_argument("--final-only", action="store_true",
                        help="test only at the end, as the recipe does: the wall time is then "
                             "the user's, process start to printed accuracy (the rung targets)")
    parser.add_argument("--allocator", default="retain", choices=CHOICES,
                        help="HFSNET_MALLOC of the training processes (hfsnet.train.allocator)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --results (a rerun replaces its own)")
    args = parser.parse_args()
    load_dataset(args.data)  # fill the decode cache outside the timed runs
    rows = previous_rows(args.results) if args.append else []
    rows = [r for r in rows if "curve" in r]  # rows of the older, final-accuracy-only format
    for preset in args.presets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_once(preset, seed, args)
            rows = [r for r in rows if (row_label(r), r["seed"]) != (row["label"], seed)] + [row]
            print(json.dumps(row), flush=True)
            # Written after every run: a crash or a stop in the fifth of five 5-minute runs
            # keeps the first four.
            summary, versus = write_results(args, rows)
    print_table(rows, summary, versus, args.peer)
    print(f"wrote {args.results}")


def previous_rows(path: Path) -> list[dict]:
    """The rows of an earlier results file; none when it does not exist yet."""
    return json.loads(path.read_text())["rows"] if path.exists() else []


def write_results(args: argparse.Namespace, rows: list[dict]) -> tuple[dict, dict]:
    summary = summarize(rows)
    versus = against_peer(rows, summary, args.peer)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.results, (json.dumps({
        "machine": cpu_description(), "cpus": os.cpu_count(),
        "threads": args.threads, "device": args.device, "data": args.data,
        "timing": "cumulative training seconds to each epoch's test accuracy (evaluation "
                  "excluded); wall_seconds: the whole process",
        "peer": args.peer, "rows": rows, "summary": summary, "versus_peer": versus,
    }, indent=2) + "\n").encode())
    return summary, versus

if __name__ == "__main__":
    main()
