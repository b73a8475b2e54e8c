"""The adaptation benchmark's report: report.md, a self-contained report.html and its plots,
from the results benchmarks/adapt.py writes. Verdicts per claim are computed from the cells;
a claim whose cells are missing is "not measured"."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display
import matplotlib.pyplot as plt

from hfsnet.analysis.document import (
    Block,
    Bullets,
    Heading,
    Image,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from hfsnet.fsutil import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
# dataset: (its name, its images' side, the side its plain task runs at)
DATASETS = {"eurosat": ("EuroSAT", 64, 64), "cifar10": ("CIFAR-10", 32, 32),
            "fashion-mnist": ("Fashion-MNIST", 28, 32)}
# benchmarks/adapt.py's "DATASET-SIDE" tasks: the dataset's images upsampled by the trunk. A
# verdict judges a dataset by its best head and best fine-tune at any side, so these fold into
# it (``fold_sides``).
UP_SIDES = (48, 64, 96, 128)
UPSAMPLED = {f"{d}-{side}": (d, side) for d in ("cifar10", "eurosat", "fashion-mnist")
             for side in UP_SIDES if side > DATASETS[d][2]}


def _task_name(dataset: str, side: int) -> str:
    name, native, _ = DATASETS[dataset]
    return f"{name} ({native} px)" if side == native else f"{name} ({native}→{side} px)"


TASK_NAMES = {**{d: _task_name(d, side) for d, (_, _, side) in DATASETS.items()},
              **{task: _task_name(d, side) for task, (d, side) in UPSAMPLED.items()}}
METHOD_NAMES = {
    "logreg-last": "logistic regression, last level",
    "ridge-last": "ridge, last level",
    "sgd-last": "SGD head, last level",
    "ridge-all": "ridge, all 8 levels, standardised, holdout strength",
    "ridge-all-cl2": "ridge, all levels, center-l2 + LOO strength (hfsnet adapt default)",
    "ridge-select": "ridge, all levels, select 1024",
    "ridge-expand": "ridge, all levels, expand 2048",
    "ridge-all-2x2": "ridge, all levels, 2x2 pooled",
    "ridge-all-2x2-cl2": "ridge, all levels, 2x2 pooled, center-l2 + LOO",
    "ridge-expand-cl2": "ridge, all levels, expand 2048, center-l2 + LOO",
    "sgd-all": "SGD head, all levels",
    "sgd-all-2x2": "SGD head, all levels, 2x2 pooled",
    "ft-1rate": "fine-tune, one rate",
    "ft-2rate": "fine-tune, two rates (trunk 0.2x)",
    "ft-2rate-ridge": "fine-tune, two rates, from the ridge head",
    "ft-1rate-batch": "fine-tune, one rate, batch-norm statistics trained",
    "ft-2rate-batch": "fine-tune, two rates, batch-norm statistics trained",
    "ft-2rate-ridge-batch": "fine-tune, two rates, from the ridge head, batch-norm statistics "
                            "trained",
    "scratch": "hfs-air-s from scratch (fast recipe)",
    "cli-adapt": "`hfsnet adapt` (process start to exit)",
    "cli-adapt-stages": "`hfsnet adapt --model-opt taps=stages`",
    "cli-adapt-flip": "`hfsnet adapt --train-views flip`",
    "cli-adapt-dihedral": "`hfsnet adapt --train-views dihedral`",
    "cli-adapt-dihedral-expand": "`hfsnet adapt --train-views dihedral --expand 2048`",
    "cli-adapt-2x2": "`hfsnet adapt --pool 2x2`",
    "cli-adapt-2x2-flip": "`hfsnet adapt --pool 2x2 --train-views flip`",
    "cli-adapt-2x2-holdout": "`hfsnet adapt --pool 2x2 --alpha-select holdout`",
    "cli-adapt-finetune": "`hfsnet adapt --finetune` (its every-block ridge head, then 15 "
                          "epochs at two rates; process start to exit, the head's test pass "
                          "included)",
    "cli-adapt-2x2-finetune": "`hfsnet adapt --pool 2x2 --finetune` (the same from the 2x2 "
                              "head)",
}
LAST = ("logreg-last", "ridge-last", "sgd-last")
MULTI = ("ridge-all", "ridge-all-cl2", "ridge-select", "ridge-expand", "ridge-all-2x2",
         "ridge-all-2x2-cl2", "ridge-expand-cl2", "sgd-all", "sgd-all-2x2")
CLI_HEADS = ("cli-adapt", "cli-adapt-stages", "cli-adapt-flip", "cli-adapt-dihedral",
             "cli-adapt-dihedral-expand", "cli-adapt-2x2",
             "cli-adapt-2x2-flip", "cli-adapt-2x2-holdout")  # `hfsnet adapt` runs: the ridge head
# `hfsnet adapt --finetune` runs: the fine-tuned model
CLI_FINETUNES = ("cli-adapt-finetune", "cli-adapt-2x2-finetune")
FROZEN_STATS = ("ft-1rate", "ft-2rate", "ft-2rate-ridge")  # hfsnet's default, --norm-stats frozen
BATCH_STATS = tuple(f"{m}-batch" for m in FROZEN_STATS)  # --norm-stats batch
LONGER = (2, 10, 15, 20, 30)  # epochs of the ft-*-eN cells (benchmarks/adapt.py), beside ft-*'s 5
LONG_FINETUNES = tuple(f"{m}-e{n}" for m in FROZEN_STATS for n in LONGER)
METHOD_NAMES.update({f"{m}-e{n}": f"{METHOD_NAMES[m]}, {n} epochs"
                     for m in FROZEN_STATS for n in LONGER})


def at_sides(methods: Sequence[str]) -> tuple[str, ...]:
    """``methods`` and their cells on upsampled tasks, as ``fold_sides`` names them."""
    sides = sorted({side for _, side in UPSAMPLED.values()})
    return (*methods, *(f"{m} @{side} px" for side in sides for m in methods))


CACHE_HEADS = at_sides(LAST + MULTI + CLI_HEADS)
FINETUNES = at_sides(FROZEN_STATS + BATCH_STATS + LONG_FINETUNES + CLI_FINETUNES)
ORDER = [*LAST, *MULTI, *FINETUNES, "scratch", *at_sides(CLI_HEADS)]
ACC_TOL = 1.0  # points: "within 1.0 point of the best fine-tune"
TIME_RATIO = 10.0  # "at <= 1/10 of its wall time"
MULTI_GAIN = 3.0  # points: "multi-level beats last-layer by >= 3 points on average"
CLI_LIMITS = {"100": 60.0, "all": 180.0}


def method_name(method: str) -> str:
    """How tables and plots name ``method``, a folded one (``fold_sides``) included."""
    base, at, side = method.partition(" @")
    name = METHOD_NAMES.get(base, base)
    return f"{name}, input upsampled to {side}" if at else name


def fold_sides(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with every upsampled task's summary rows and cells moved to the task whose
    images it upsamples, the side in the method's name (``cli-adapt @96 px``)."""
    def fold(row: dict[str, Any]) -> dict[str, Any]:
        if row["task"] not in UPSAMPLED:
            return row
        base, side = UPSAMPLED[row["task"]]
        return {**row, "task": base, "method": f"{row['method']} @{side} px"}

    return {**results, "summary": [fold(r) for r in results["summary"]],
            "cells": [fold(c) for c in results["cells"]]}


def _rows(results: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["task"], r["regime"], r["method"]): r for r in results["summary"]}


def _pct(row: dict[str, Any]) -> str:
    spread = "" if row["acc_std"] is None else f" ± {100 * row['acc_std']:.2f}"
    return f"{100 * row['acc_mean']:.2f}{spread} (n={row['n']})"


def _tasks(results: dict[str, Any]) -> list[str]:
    present = {r["task"] for r in results["summary"]}
    return [t for t in TASK_NAMES if t in present]


def accuracy_table(results: dict[str, Any], regime: str, *,
                   scratch: bool = True) -> Table | None:
    """Accuracy and seconds per method and task; ``scratch``: with all images, the reused
    from-scratch CIFAR-10 reference as a last row."""
    rows = _rows(results)
    tasks = _tasks(results)
    methods = [m for m in ORDER if any((t, regime, m) in rows for t in tasks)]
    if not methods:
        return None
    body = []
    for method in methods:
        cells = [method_name(method)]
        for task in tasks:
            row = rows.get((task, regime, method))
            cells.append("—" if row is None else f"{_pct(row)}; {row['seconds_mean']:.0f} s")
        body.append(cells)
    if scratch and regime == "all" and "cifar10" in tasks:
        ref = results["scratch_cifar10_all_reused"]
        body.append(["hfs-air-s from scratch (fast recipe), reused"] + [
            f"{100 * ref['test_acc']:.2f} (n={ref['n']}); {ref['seconds']:.0f} s"
            if t == "cifar10" else "—" for t in tasks])
    headers = ["method", *[f"{TASK_NAMES[t]}: test acc % ; wall s" for t in tasks]]
    return Table(headers, body)


def level_table(results: dict[str, Any]) -> Table | None:
    rows = _rows(results)
    tasks = [t for t in _tasks(results) if (t, "100", "level-1") in rows]
    if not tasks:
        return None
    body = [[f"level {n}"] + [_pct(rows[(t, "100", f"level-{n}")])
                              if (t, "100", f"level-{n}") in rows else "—" for t in tasks]
            for n in range(1, 9)]
    return Table(["ridge on one level (gap), 100/class", *[TASK_NAMES[t] for t in tasks]], body)


def plot_accuracy(results: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: test accuracy per method (bars) per task (groups), a panel per regime."""
    rows = _rows(results)
    tasks = _tasks(results)
    regimes = [g for g in ("100", "all") if any(k[1] == g and k[2] != "cli-adapt"
                                                 for k in rows)]
    if not regimes:
        return None
    fig, axes = plt.subplots(len(regimes), 1, figsize=(11, 4.6 * len(regimes) + 1.2),
                             squeeze=False)
    for ax, regime in zip(axes[:, 0], regimes, strict=True):
        methods = [m for m in ORDER if m != "cli-adapt" and any(
            (t, regime, m) in rows for t in tasks)]
        width = 0.8 / max(len(methods), 1)
        cmap = plt.get_cmap("tab20")
        for i, method in enumerate(methods):
            xs, ys, es = [], [], []
            for j, task in enumerate(tasks):
                row = rows.get((task, regime, method))
                if row is not None:
                    xs.append(j + (i - len(methods) / 2 + 0.5) * width)
                    ys.append(100 * row["acc_mean"])
                    es.append(100 * (row["acc_std"] or 0.0))
            ax.bar(xs, ys, width, yerr=es, label=method_name(method),
                   color=cmap(i % 20), capsize=2)
        ax.set_xticks(range(len(tasks)), [TASK_NAMES[t] for t in tasks])
        low = min((100 * r["acc_mean"] for k, r in rows.items()
                   if k[1] == regime and k[2] in methods), default=0)
        ax.set_ylim(max(0, low - 5), 100)
        ax.set_ylabel("test accuracy %")
        label = "100 training images per class" if regime == "100" else "all training images"
        ax.set_title(f"{label} (mean ± sd over seeds)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=3, loc="lower center")
    fig.tight_layout(rect=(0, 0.05 + 0.07 / len(regimes), 1, 1))
    return _save(fig, path, tight=False)


def plot_levels(results: dict[str, Any], path: Path) -> Path | None:
    rows = _rows(results)
    tasks = [t for t in _tasks(results) if (t, "100", "level-1") in rows]
    if not tasks:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for task in tasks:
        levels = [n for n in range(1, 9) if (task, "100", f"level-{n}") in rows]
        mean = [100 * rows[(task, "100", f"level-{n}")]["acc_mean"] for n in levels]
        std = [100 * (rows[(task, "100", f"level-{n}")]["acc_std"] or 0) for n in levels]
        line = ax.errorbar(levels, mean, yerr=std, marker="o", capsize=3,
                           label=TASK_NAMES[task])
        multi = rows.get((task, "100", "ridge-all"))
        if multi is not None:
            ax.axhline(100 * multi["acc_mean"], ls="--", lw=1, color=line[0].get_color())
    ax.set_xlabel("EfficientNet-Lite0 level (1 = stem + first stage, 8 = head conv, 1280 ch)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("Ridge on one level alone, 100/class (dashed: ridge on all 8 levels)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig: Any, path: Path, tight: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- verdicts


def _best(rows: dict, task: str, regime: str, methods: Sequence[str]) -> tuple[str, dict] | None:
    found = [(m, rows[(task, regime, m)]) for m in methods if (task, regime, m) in rows]
    return max(found, key=lambda item: item[1]["acc_mean"]) if found else None


def _fastest_within(rows: dict, task: str, methods: Sequence[str],
                    floor: float) -> tuple[str, dict] | None:
    """The quickest of ``methods`` at 100/class whose mean accuracy is at least ``floor``."""
    found = [(m, rows[(task, "100", m)]) for m in methods if (task, "100", m) in rows
             and rows[(task, "100", m)]["acc_mean"] >= floor]
    return min(found, key=lambda item: item[1]["seconds_mean"]) if found else None


def _mark(ok: bool | None) -> str:
    return {True: "supported", False: "not supported", None: "not measured"}[ok]


def verdict_multi_level(rows: dict, tasks: list[str]) -> list[str]:
    """3.3-3.4 and the >= 3 point target: best multi-level head vs best last-level probe."""
    out = []
    for regime in ("100", "all"):
        gains, parts, same = [], [], []
        for task in tasks:
            multi, last = _best(rows, task, regime, MULTI), _best(rows, task, regime, LAST)
            if multi is None or last is None:
                continue
            gain = 100 * (multi[1]["acc_mean"] - last[1]["acc_mean"])
            gains.append(gain)
            parts.append(f"{TASK_NAMES[task]}: {multi[0]} {100 * multi[1]['acc_mean']:.2f}% vs "
                         f"{last[0]} {100 * last[1]['acc_mean']:.2f}% ({gain:+.2f})")
            if (task, regime, "ridge-all") in rows and (task, regime, "ridge-last") in rows:
                same.append(100 * (rows[(task, regime, "ridge-all")]["acc_mean"]
                                   - rows[(task, regime, "ridge-last")]["acc_mean"]))
        label = "100/class" if regime == "100" else "all images"
        if not gains:
            out.append(f"Claim 3.3-3.4 (multi-level beats the last level), {label}: not "
                       "measured.")
            continue
        ok = all(g > 0 for g in gains)
        same_text = (f" Same fitter (ridge all levels minus ridge last level): "
                     f"{', '.join(f'{g:+.2f}' for g in same)} points." if same else "")
        out.append(f"Claim 3.3-3.4 (multi-level beats the last level), {label}: "
                   f"{_mark(ok)} on {len(gains)} task(s); best multi-level head minus best "
                   f"last-level probe: {'; '.join(parts)}.{same_text}")
        if regime == "100":
            mean = statistics.fmean(gains)
            measured = len(gains) == len(tasks)
            out.append(f"Target: multi-level beats last-layer by >= {MULTI_GAIN:.0f} points on "
                       f"average at 100/class: {_mark(mean >= MULTI_GAIN)} — average gain "
                       f"{mean:+.2f} points over {len(gains)} task(s)"
                       f"{'' if measured else ' (not all tasks measured)'}.")
    return out


def _overall(checks: list[bool | None], tasks: list[str]) -> tuple[bool | None, str]:
    """All measured tasks pass and every task measured: supported; any measured task fails:
    not supported; otherwise not measured."""
    measured = [c for c in checks if c is not None]
    note = "" if len(measured) == len(tasks) else f" ({len(measured)} of {len(tasks)} tasks)"
    if measured and not all(measured):
        return False, note
    return (True if measured and len(measured) == len(tasks) else None), note


def _training_seconds(results: dict[str, Any], cell: dict[str, Any]) -> float | None:
    """A cell's seconds without the pass over the test split that heads and fine-tunes alike
    need: a fine-tune's epochs (and, from the ridge head, the training rows' share of its
    feature pass), a head's fit and its training rows' share of the feature pass. The share
    is by image count: the cache's build time is recorded for train and test together."""
    caches = {c["task"]: c for c in results["caches"]}
    if cell["task"] not in caches:
        return None
    cache = caches[cell["task"]]
    classes = 10  # every task of this benchmark
    train = cache["train_rows"] if cell["regime"] == "all" else results["per_class"] * classes
    share = train / (train + cache["test_rows"])
    feature = cell.get("feature_seconds") or 0.0
    if "epoch_seconds" in cell:
        return sum(cell["epoch_seconds"]) + share * feature
    if "finetune_train_seconds" in cell:  # `adapt --finetune`: its head, then the epochs
        return cell["finetune_train_seconds"] + cell["fit_seconds"] + share * feature
    if cell.get("fit_seconds") is None:
        return None
    return cell["fit_seconds"] + share * feature


def _mean_training_seconds(results: dict[str, Any], task: str, regime: str,
                           method: str) -> float | None:
    values = [_training_seconds(results, c) for c in results["cells"]
              if (c["task"], c["regime"], c["method"]) == (task, regime, method)]
    return statistics.fmean(values) if values and None not in values else None


def _cpus(results: dict[str, Any], task: str, regime: str, method: str) -> str:
    """The CPU models a method's cells ran on (the machine kind changed between sessions)."""
    found = {c.get("cpu", "unrecorded") for c in results["cells"]
             if (c["task"], c["regime"], c["method"]) == (task, regime, method)}
    return " + ".join(sorted(found))


def verdict_cache_vs_finetune(results: dict[str, Any], rows: dict, tasks: list[str],
                              label: str = "") -> list[str]:
    """Claim 3.1 (faster at equal accuracy), best cache head vs best fine-tune per task at
    100/class, and the target (within 1.0 point at <= 1/10 of the time), judged on the fastest
    head within the point; the time ratio end to end and without the test pass both need.
    ``label`` names the cells' grid."""
    lines, claim, target, train_target = [], [], [], []
    for task in tasks:
        head, ft = _best(rows, task, "100", CACHE_HEADS), _best(rows, task, "100", FINETUNES)
        if head is None or ft is None:
            lines.append(f"{TASK_NAMES[task]}: no fine-tune cell yet, not measured.")
            claim.append(None)
            target.append(None)
            train_target.append(None)
            continue
        gap = 100 * (ft[1]["acc_mean"] - head[1]["acc_mean"])
        ratio = ft[1]["seconds_mean"] / head[1]["seconds_mean"]
        claim.append(gap <= ACC_TOL and ratio > 1)
        quick = _fastest_within(rows, task, CACHE_HEADS, ft[1]["acc_mean"] - ACC_TOL / 100)
        quick_ratio = None if quick is None else ft[1]["seconds_mean"] / quick[1]["seconds_mean"]
        target.append(quick_ratio is not None and quick_ratio >= TIME_RATIO)
        ft_train = _mean_training_seconds(results, task, "100", ft[0])
        head_train = (None if quick is None
                      else _mean_training_seconds(results, task, "100", quick[0]))
        train_ratio = ft_train / head_train if head_train and ft_train else None
        train_target.append(None if train_ratio is None else train_ratio >= TIME_RATIO)
        within = (f"; no head within {ACC_TOL:.1f} point" if quick is None else
                  f"; the fastest head within {ACC_TOL:.1f} point, {quick[0]} "
                  f"{_pct(quick[1])} in {quick[1]['seconds_mean']:.0f} s, took "
                  f"{1 / quick_ratio:.2f}x the fine-tune's time")
        training = ("" if train_ratio is None else
                    f" (without the test pass {head_train:.0f} s vs {ft_train:.0f} s, "
                    f"{1 / train_ratio:.2f}x)")
        lines.append(f"{TASK_NAMES[task]}: best cache head {head[0]} {_pct(head[1])} in "
                     f"{head[1]['seconds_mean']:.0f} s (feature pass included) vs best "
                     f"fine-tune {ft[0]} {_pct(ft[1])} in {ft[1]['seconds_mean']:.0f} s: "
                     f"fine-tune minus head {gap:+.2f} points; the fine-tune took {ratio:.1f}x "
                     f"the head's wall time{within}{training} (head cells: "
                     f"{_cpus(results, task, '100', head[0])}; fine-tune cells: "
                     f"{_cpus(results, task, '100', ft[0])}).")
    (c_ok, c_note), (t_ok, t_note) = _overall(claim, tasks), _overall(target, tasks)
    tt_ok, tt_note = _overall(train_target, tasks)
    grid = f" ({label})" if label else ""
    return [f"Claim 3.1 (a head on cached features is faster at equal accuracy, 100/class)"
            f"{grid}: {_mark(c_ok)}{c_note}.",
            f"Target{grid}: best cache head within {ACC_TOL:.1f} point of the best fine-tune at "
            f"<= 1/{TIME_RATIO:.0f} of its wall time on every task: {_mark(t_ok)}{t_note}. "
            f"Without the pass over the test split (which both need, and which at 1,000 "
            f"training images is most of a head's time): {_mark(tt_ok)}{tt_note}.",
            *lines]


def verdict_two_rates(rows: dict, tasks: list[str]) -> list[str]:
    parts, signs = [], []
    for task in tasks:
        one, two = rows.get((task, "100", "ft-1rate")), rows.get((task, "100", "ft-2rate"))
        if one is None or two is None:
            continue
        diff = 100 * (two["acc_mean"] - one["acc_mean"])
        signs.append(diff > 0)
        parts.append(f"{TASK_NAMES[task]}: two rates {_pct(two)} vs one rate {_pct(one)} "
                     f"({diff:+.2f})")
    if not parts:
        return ["Claim 3.5 (two learning rates beat one), 100/class: not measured."]
    return [f"Claim 3.5 (two learning rates beat one), 100/class, {len(parts)} task(s): "
            f"{_mark(all(signs))} — {'; '.join(parts)}."]


# The cli-adapt cells run alone (``--results`` of a ``--methods cli-adapt`` run), per machine:
# the 2-core machine kind was an AMD EPYC with AVX-512 BF16, then an Intel Xeon, then an AMD
# EPYC with AVX2 only (docs/performance.md section 0), there again once hfsnet kept freed memory,
# once adapt tapped every block and once it upsampled small images to 96 px: (label, results
# file, task).
UPSAMPLED_DEFAULT = "quiet, AMD EPYC (AVX2 only), upsampled to 96 px (the default since 2026-12-08)"
QUIET_CLI = (("quiet, AMD EPYC (AVX-512 BF16)", REPO / "benchmarks/results/adapt-cli-quiet.json",
              "eurosat"),
             ("quiet, Intel Xeon", REPO / "benchmarks/results/adapt-cli-quiet-xeon.json",
              "eurosat"),
             ("quiet, AMD EPYC (AVX2 only)",
              REPO / "benchmarks/results/adapt-cli-quiet-epyc-avx2.json", "eurosat"),
             ("quiet, AMD EPYC (AVX2 only), freed memory retained",
              REPO / "benchmarks/results/adapt-cli-allocator-epyc-avx2.json", "eurosat"),
             ("quiet, AMD EPYC (AVX2 only), every block tapped",
              REPO / "benchmarks/results/adapt-blocks-epyc-avx2.json", "eurosat"),
             ("quiet, AMD EPYC (AVX2 only), padding inside the convolutions",
              REPO / "benchmarks/results/adapt-unpad-epyc-avx2.json", "eurosat"),
             (UPSAMPLED_DEFAULT, REPO / "benchmarks/results/adapt-unpad-epyc-avx2.json",
              "eurosat-96"),
             (UPSAMPLED_DEFAULT, REPO / "benchmarks/results/adapt-cifar-sides-epyc-avx2.json",
              "eurosat-96"))


def _cli_cells(results: dict[str, Any], regime: str) -> list[tuple[str, dict[str, Any]]]:
    """(label, cell) of the EuroSAT cli-adapt cells of ``regime``: this grid's (contended) and
    the quiet reruns', the last of which the target is judged by when present."""
    runs = [("contended", results["cells"], "eurosat")] + [
        (label, json.loads(path.read_text())["cells"], task) for label, path, task in QUIET_CLI
        if path.exists()]
    return [(label, c) for label, cells, task in runs for c in cells
            if c["method"] == "cli-adapt" and c["task"] == task and c["regime"] == regime]


def verdict_cli(results: dict[str, Any]) -> list[str]:
    out = []
    for regime, limit in CLI_LIMITS.items():
        cells = _cli_cells(results, regime)
        label = "100/class" if regime == "100" else "all 24,300 training images"
        if not cells:
            out.append(f"Target: `hfsnet adapt` on EuroSAT, {label}, under {limit:.0f} s: not "
                       "measured.")
            continue
        judged = cells[-1][1]
        runs = "; ".join(
            f"{kind}: {c['seconds']:.1f} s (feature pass {c['feature_seconds']:.1f} s, head fit "
            f"{c['fit_seconds']:.1f} s, test scoring {c['eval_seconds']:.1f} s), test accuracy "
            f"{100 * c['test_acc']:.2f}%, load average {c['load_before'][0]:.1f} before, "
            f"{c['load_after'][0]:.1f} after" for kind, c in cells)
        out.append(f"Target: `hfsnet adapt` on EuroSAT, {label}, under {limit:.0f} s from process "
                   f"start: {_mark(judged['seconds'] < limit)} (judged by the {cells[-1][0]} "
                   f"run) — {runs}.")
    return out


# ---------------------------------------------------------------- the document


def _setup(results: dict[str, Any]) -> list[Block]:
    cells = results["cells"]
    loads = [c["load_before"][0] for c in cells] + [c["load_after"][0] for c in cells]
    seeds = sorted({c["seed"] for c in cells})
    m = results["machine"]
    return [Heading("Adapting a pretrained EfficientNet-Lite0 to new image data", 1), Paragraph(
        f"Trunk: {results['model']}. Tasks: EuroSAT RGB (64 px, 24,300 train / 2,700 test), "
        "CIFAR-10 (32 px, 50,000 / 10,000), Fashion-MNIST (28 px grayscale replicated to 3 "
        "channels and upsampled to 32 px by the trunk's resize, 60,000 / 10,000). Regimes: 100 "
        "training images per class (few_shot with the seed, VTAB-1k style) and all training "
        "images; always the whole test split. Seeds "
        f"{', '.join(map(str, seeds))} (the count per cell is n). Wall times include the "
        "feature pass of the regime (the trunk over its train and test images) for every cache "
        "head, as benchmarks/transfer.py counts them."), Paragraph(
        f"Machine: {m['cpus']} CPU cores shared with other engineers' jobs, an AMD EPYC with "
        "AVX-512 BF16 for the cells of earlier sessions (their cpu reads 'AMD EPYC') and an "
        "Intel Xeon without AMX from 2026-12-02 06:05 on (each cell records its cpu; the quiet "
        "one-machine rerun further down ran on a third kind, an AMD EPYC with AVX2 only): a "
        "bf16 matmul runs 2.3x fp32 on the first and 0.53x on the second "
        "(benchmarks/precision.py), and the fine-tunes autocast to bf16, so a fine-tune cell "
        "on the Xeon is slower than it was on the EPYC. Load average "
        f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} over the cells (a quiet "
        "machine reads ~1-2 for one 2-thread job). Every timing here is contended: read the "
        "ratios between methods, not absolute seconds. torch "
        f"{m['torch']}, Python {m['python']}.", emphasis=True)]


def _caches(results: dict[str, Any]) -> list[Block]:
    if not results["caches"]:
        return []
    body = []
    seen: dict[str, dict] = {}
    for c in results["caches"]:
        seen[c["task"]] = c
    for c in seen.values():
        check = c["few_rows_check"]
        body.append([TASK_NAMES.get(c["task"], c["task"]),
                     f"{c['train_rows']:,} + {c['test_rows']:,}",
                     f"{c['full_build_seconds']:.0f}", f"{c['few_build_seconds']:.0f}",
                     f"labels equal: {check['labels_equal']}; max |diff| "
                     f"{check['max_abs_diff']:.3g} (values up to {check['max_abs_value']:.3g})"])
    return [Heading("Feature passes"), Paragraph(
        "One cache per task holds every level 2x2-pooled (8,256 float16 columns); gap columns "
        "are the means of each channel's four cells (exact: every level's map side is even or "
        "1 at 32 and 64 px). The 100/class rows are sliced from it by replaying few_shot's draw; "
        "a real 100/class cache (seed 0) was built too, for its time and to check the rows."),
        Table(["task", "train + test images", "full cache build s",
               "100/class cache build s", "100/class rows sliced vs built directly"], body)]


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["task"], row["regime"], row["method"]


def with_reused(results: dict[str, Any], other: dict[str, Any], name: str) -> dict[str, Any]:
    """``results`` plus the summary rows, cells and caches of ``other`` for the (task, regime,
    method) and task keys ``results`` lacks; ``other``'s commands marked as reused from
    ``name``."""
    have = {_key(r) for r in results["summary"]}
    tasks = {c["task"] for c in results.get("caches", [])}
    return {**results,
            "summary": results["summary"] + [r for r in other["summary"] if _key(r) not in have],
            "cells": results["cells"] + [c for c in other["cells"] if _key(c) not in have],
            "caches": results.get("caches", []) + [c for c in other.get("caches", [])
                                                   if c["task"] not in tasks],
            "commands": results["commands"] + [f"{c}  (reused from {name})"
                                               for c in other["commands"]]}


@dataclass(frozen=True)
class Grid:
    """Cells rerun on one machine with nothing else running, beside the contended grid: the
    time target is judged by these (their commands are in the results file). ``reuse``: grids
    of the same machine whose cells this one did not rerun join it, the first grid's before the
    second's."""

    title: str
    path: Path
    about: str
    reuse: tuple[Path, ...] = ()

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        results = json.loads(self.path.read_text())
        for path in self.reuse:
            if path.exists():
                results = with_reused(results, json.loads(path.read_text()), path.name)
        return fold_sides(results)


QUIET_GRIDS = (
    Grid("quiet, one machine: AMD EPYC with AVX2 only, fp32",
         REPO / "benchmarks/results/adapt-epyc-quiet.json",
         "The same cells as above, rerun one at a time; `--precision auto` picked fp32 for the "
         "fine-tunes (bf16 is emulated on this CPU, 0.1x fp32's speed in EfficientNet-Lite0's "
         "step). The '-e' rows fine-tune longer than the 5 epochs of the grid, to show where "
         "fine-tuning stops gaining."),
    Grid("training views and 2x2 pooling, quiet, Intel Xeon without AMX",
         REPO / "benchmarks/results/adapt-views-xeon.json",
         "`hfsnet adapt` as a user runs it (timed from process start), with `--train-views` "
         "(fixed mirrored, or all 8 flipped and turned, copies of every training image) and "
         "`--pool 2x2`, against a 15-epoch two-rate fine-tune from the ridge head in the same "
         "session."),
    Grid("freed memory retained, quiet, one machine: AMD EPYC with AVX2 only, fp32",
         REPO / "benchmarks/results/adapt-allocator-epyc-avx2.json",
         "The views grid above rerun on the AVX2 EPYC after hfsnet began keeping freed memory "
         "for the next batch (`hfsnet.train.allocator`: glibc had handed each batch's "
         "activations back to the kernel, and the trunk pass spent about as long faulting "
         "fresh pages in as computing); the fine-tunes ran in the benchmark's process under "
         "the same setting, and the heads were rerun once ridge fits ran on both threads "
         "(`benchmarks/ridge_threads.py`)."),
    Grid("every block's output, larger input sides and longer fine-tunes, quiet, AMD EPYC "
         "with AVX2 only, fp32",
         REPO / "benchmarks/results/adapt-blocks-epyc-avx2.json",
         "`hfsnet adapt` after its EfficientNet-Lite0 trunk began tapping all 16 blocks instead "
         "of the 7 stage ends (`cli-adapt`; `cli-adapt-stages` keeps the stages), at the data's "
         "side and upsampled by the trunk ('@96 px': EuroSAT's 64 px tiles resized to 96), "
         "against two-rate fine-tunes from the ridge head for 15 and 30 epochs, the 15-epoch "
         "one also upsampled (EuroSAT to 128 px, CIFAR-10 and Fashion-MNIST to 64): the best "
         "fine-tune at any side is the one to match."),
    Grid("the same heads once the frozen pass moved its 'same' paddings into the convolutions, "
         "quiet, AMD EPYC with AVX2 only, fp32",
         REPO / "benchmarks/results/adapt-unpad-epyc-avx2.json",
         "Every `hfsnet adapt` cell of the grid above rerun after `FrozenTrunk` stopped copying "
         "each depthwise conv's input into a padded tensor (`unpad_convs`; the pass 1.15-1.46x "
         "faster, `benchmarks/feature_pass.py`); the fine-tunes are the grid above's cells "
         "(commands marked 'reused'), their seconds including the ridge head's feature pass "
         "as it ran before the change.",
         reuse=(REPO / "benchmarks/results/adapt-blocks-epyc-avx2.json",)),
    Grid("CIFAR-10 upsampled to 96 and 128 px, quiet, AMD EPYC with AVX2 only, fp32",
         REPO / "benchmarks/results/adapt-cifar-sides-epyc-avx2.json",
         "CIFAR-10 adapted and fine-tuned at larger sides (the 64 px cells rerun beside them), "
         "since the 64 px fine-tune had gained 13 points over 32 px and left every head 3.4 "
         "points behind; with Fashion-MNIST at 96 px and EuroSAT's 24,300 images at 96 px, the "
         "cells behind `hfsnet adapt`'s 96 px default side for small images. The other tasks' "
         "cells are the two grids above's (commands marked 'reused').",
         reuse=(REPO / "benchmarks/results/adapt-unpad-epyc-avx2.json",
                REPO / "benchmarks/results/adapt-blocks-epyc-avx2.json")),
    Grid("`hfsnet adapt --finetune` as the fine-tune to match, quiet, AMD EPYC with AVX2 only, "
         "fp32",
         REPO / "benchmarks/results/adapt-finetune-epyc-avx2.json",
         "The benchmark's own fine-tunes start from a ridge head on the 7 stage ends; `hfsnet "
         "adapt --finetune` starts from its head on all 16 blocks and beat them by 2.2 points "
         "on CIFAR-10 at 128 px (one seed, README), so a head was being judged against a "
         "weaker fine-tune than hfsnet offers. Here that command runs at adapt's default side "
         "for EuroSAT and Fashion-MNIST (96 px) and at the best fine-tuning side measured for "
         "EuroSAT and CIFAR-10 (128 px), 3 seeds; its seconds are the whole command's, so "
         "they include the head's own test pass, which a fine-tune alone would not need. "
         "Every other cell is the three grids above's (commands marked 'reused').",
         reuse=(REPO / "benchmarks/results/adapt-cifar-sides-epyc-avx2.json",
                REPO / "benchmarks/results/adapt-unpad-epyc-avx2.json",
                REPO / "benchmarks/results/adapt-blocks-epyc-avx2.json")),
    Grid("2x2 pooling at larger sides, and fine-tunes from the 2x2 head, quiet, AMD EPYC with "
         "AVX2 only, fp32",
         REPO / "benchmarks/results/adapt-fashion-2x2-epyc-avx2.json",
         "`--pool 2x2` had gained 1.4-2.6 points at the data's side on CIFAR-10 and "
         "Fashion-MNIST but had not been run at the sides that beat it since; here it is, on "
         "every task at 96 px and on Fashion-MNIST at 48 and 64 px (at 64 px also on all 60,000 "
         "training images, where the 2x2 fit is 4x wider), with `hfsnet adapt --pool "
         "2x2 --finetune` (the fine-tune from that head) as a fine-tune to match as well. "
         "Every other cell is the four grids above's (commands marked 'reused').",
         reuse=(REPO / "benchmarks/results/adapt-finetune-epyc-avx2.json",
                REPO / "benchmarks/results/adapt-cifar-sides-epyc-avx2.json",
                REPO / "benchmarks/results/adapt-unpad-epyc-avx2.json",
                REPO / "benchmarks/results/adapt-blocks-epyc-avx2.json")),
)


def quiet_blocks(grid: Grid, quiet: dict[str, Any]) -> list[Block]:
    """One quiet grid's cells: their table, load averages and commands."""
    cells = quiet["cells"]
    loads = [c["load_before"][0] for c in cells] + [c["load_after"][0] for c in cells]
    precisions = sorted({c.get("precision", "fp32") for c in cells
                         if "epoch_seconds" in c or "finetune_train_seconds" in c})
    blocks = [Heading(f"Heads against fine-tunes, {grid.title}"), Paragraph(
        f"{grid.about} Load average {min(loads, default=0):.1f}-{max(loads, default=0):.1f}, "
        f"2 threads; CPU {', '.join(sorted({c.get('cpu', '?') for c in cells}))}; fine-tunes "
        f"in {'/'.join(precisions) or '—'}. A head's seconds include the feature pass over "
        "its 1,000 training and every test image.")]
    table = accuracy_table(quiet, "100")
    if table is not None:
        blocks.append(table)
    every = accuracy_table(quiet, "all", scratch=False)
    if every is not None:
        blocks += [Paragraph("With every training image (the feature pass over all of them):"),
                   every]
    blocks += [Paragraph("Commands:"), Bullets([f"`{c}`" for c in quiet["commands"]])]
    return blocks


def blocks_for(results: dict[str, Any], plots: dict[str, Path], base: Path) -> list[Block]:
    rows = _rows(results)
    tasks = [t for t in ("eurosat", "cifar10", "fashion-mnist") if t in _tasks(results)]
    quiet = [(grid, found) for grid in QUIET_GRIDS if (found := grid.load()) is not None]
    quiet_verdicts = [line for grid, found in quiet for line in verdict_cache_vs_finetune(
        found, _rows(found), [t for t in tasks if t in _tasks(found)], grid.title)]
    blocks = _setup(results)
    blocks += [Heading("Verdicts"), Bullets(
        verdict_multi_level(rows, tasks)
        + verdict_cache_vs_finetune(results, rows, tasks, "contended grid" if quiet else "")
        + quiet_verdicts + verdict_two_rates(rows, tasks) + verdict_cli(results)), Paragraph(
        f"Read the contended grid's fine-tuning verdicts with their budget: "
        f"{results['grid']['ft_epochs']} epochs over 1,000 images on a contended CPU, one seed "
        "where n=1, no learning-rate search. They say what fine-tuning reaches in a few CPU "
        "minutes, not what it reaches trained to convergence; a one-seed difference of a few "
        "points is within what seeds move a 1,000-image run. The quiet one-machine cells add "
        "10 and 15 epochs (one seed): fine-tuning was still gaining at 15.", emphasis=True)]
    for regime, label in (("100", "100 training images per class"),
                          ("all", "All training images")):
        table = accuracy_table(results, regime)
        if table is not None:
            blocks += [Heading(label), table]
    if "accuracy" in plots:
        blocks.append(Image("Test accuracy per method and task",
                            str(plots["accuracy"].relative_to(base))))
    for grid, found in quiet:
        blocks += quiet_blocks(grid, found)
    level = level_table(results)
    if level is not None:
        blocks += [Heading("Per-level probe (100/class)"), level]
    if "levels" in plots:
        blocks.append(Image("Ridge on each level alone, 100/class",
                            str(plots["levels"].relative_to(base))))
    blocks += _caches(results)
    blocks += [Heading("Commands"), Bullets([f"`{c}`" for c in results["commands"]])]
    return blocks


def write_report(results: dict[str, Any], out_dir: Path,
                 extra: Sequence[Block] = ()) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {}
    for name, fn in (("accuracy", plot_accuracy), ("levels", plot_levels)):
        made = fn(results, out_dir / "plots" / f"{name}.png")
        if made is not None:
            plots[name] = made
    blocks = [*blocks_for(results, plots, out_dir), *notes_blocks(results), *extra,
              *readme_table(results)]
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_bytes(md, to_markdown(blocks).encode())
    atomic_write_bytes(page, to_html(blocks, "hfsnet adaptation benchmark", out_dir).encode())
    return md, page


def readme_table(results: dict[str, Any]) -> list[Block]:
    """A proposed README table (Markdown, for the lead to paste): the CLI timings and, per task
    at 100/class, the best cache head and the best fine-tune."""
    rows = _rows(results)
    lines = []
    for c in results["cells"]:
        if c["method"] == "cli-adapt":
            command = c["command"].replace(f"{REPO}/", "").replace(f"{REPO.parent}/", "../")
            lines.append([f"`{command}`", f"{100 * c['test_acc']:.2f}%",
                          f"{c['seconds']:.0f} s wall from process start, load average "
                          f"~{c['load_after'][0]:.0f} on 2 shared cores"])
    for task in ("eurosat", "cifar10", "fashion-mnist"):
        for label, methods in (("best cache head", CACHE_HEADS), ("best fine-tune", FINETUNES)):
            best = _best(rows, task, "100", methods)
            if best is not None:
                lines.append([f"{TASK_NAMES[task]}, 100/class, {label}: "
                              f"{method_name(best[0])}", _pct(best[1]),
                              f"{best[1]['seconds_mean']:.0f} s wall"
                              + (" incl. the feature pass" if label != "best fine-tune" else "")])
    if not lines:
        return []
    return [Heading("Proposed README table"), Paragraph(
        "For the lead to paste under the README's results (`.venv/bin/python benchmarks/"
        "adapt.py --report` regenerates it; the cells are in benchmarks/results/adapt.json):"),
        Table(["command / setting", "test accuracy", "notes"], lines)]


def render_check(page: Path, png: Path) -> str:
    """Open the page in headless Chromium (when installed): images decoded, a screenshot."""
    from hfsnet.analysis.browser import check_page, find_chromium, screenshot

    if find_chromium() is None:
        return "chromium not installed: page not checked"
    check = check_page(page)
    screenshot(page, png, height=check.height)
    return (f"{page}: {check.images_loaded}/{check.images_total} images decoded, "
            f"{check.height} px tall; screenshot {png}")


def _mean_of(results: dict[str, Any], key: str, **match: str) -> float | None:
    values = [c[key] for c in results["cells"]
              if all(c.get(k) == v for k, v in match.items()) and c.get(key) is not None]
    return statistics.fmean(values) if values else None


def notes_blocks(results: dict[str, Any]) -> list[Block]:
    """How the cells were run, and what the numbers say should change in hfsnet."""
    items = [
        "Fine-tuning: AdamW, head lr 2e-3 (trunk 4e-4 with two rates, 2e-3 with one), "
        "one-cycle, batch 64, 4 px crops and flips, bf16 (forced in this grid; the quiet "
        "one-machine cells ran `--precision auto`, which picked fp32), "
        f"{results['grid']['ft_epochs']} epochs on the 1,000 images (the '-e' rows: more); "
        "the 'fresh' head is the model's own (EfficientNet-Lite0's default head reads all 8 "
        "levels, gap, 20,650 parameters); 'from the ridge head' "
        "installs the ridge-all head first. The trunk's batch norms keep their ImageNet "
        "statistics (`--norm-stats frozen`, hfsnet's default); the `-batch` rows train them "
        "(`--norm-stats batch`). Fine-tune cells ran with OMP_NUM_THREADS=1, two processes "
        "side by side or beside the 2-thread head cells (to finish in the time given), so all "
        "were slowed by each other and by other engineers' jobs.",
        "The SGD head trains 30 epochs at 100/class and 10 on all images (batch 64, AdamW "
        "1e-2, cosine). Logistic regression: LBFGS (strong Wolfe, 200 iterations), L2 from "
        "{1e-4, 1e-3, 1e-2} on a 10% holdout, then refitted on every row.",
        "Methods not run in a regime show '—'; fine-tuning on all training images and the "
        "CIFAR-10 64 px cell set were not run (CPU time).",
    ]
    found = [
        "transfer/adapt.py: `adapt` scored its fitted model with a second trunk pass over the "
        "test split (28 s of 76 s at 100/class on EuroSAT); it now scores the cached test "
        "descriptors with the fitted head, the same predictions up to float16 rounding.",
        "transfer/subsets.py: few_shot replaced the data's mean and std by the subset's own, "
        "so few_shot(for_trunk(...)) dropped the trunk's normalisation; its docstring now says "
        "so and every caller applies for_trunk after it.",
        "train/runtime.py: the grid's fine-tunes forced bf16, which on the AVX2-only EPYC ran "
        "EfficientNet-Lite0's step at 6.8 img/s against 66 in fp32 (benchmarks/precision.py); "
        "`--precision auto` timed a stand-in dense 3x3 convolution, which cannot tell a "
        "depthwise net's cost. It now times the model's own step, and the grid runs auto.",
    ]
    fit2x2 = _mean_of(results, "fit_seconds", method="ridge-all-2x2", regime="100")
    if fit2x2 is not None:
        found.append(
            "transfer/ridge.py: ridge on the 8,256 2x2 columns at 1,000 rows took 165 s in the "
            "d x d primal solve; with no more rows than columns it now solves in the dual (n x n "
            f"kernel): {fit2x2:.0f} s per fit in the cells above, most of it the X^T X "
            "statistics kept for `fit-head --add`.")
    found += _norm_stats_finding(results)
    return [Heading("How the cells were run"), Bullets(items),
            Heading("Found by this benchmark, and changed in hfsnet"), Bullets(found)]


def _norm_stats_finding(results: dict[str, Any]) -> list[str]:
    """Fine-tuning with frozen vs trained batch-norm statistics, per method and task."""
    rows = _rows(results)
    pairs = [f"{TASK_NAMES[t]} {m}: {_pct(rows[(t, '100', m)])} frozen vs "
             f"{_pct(rows[(t, '100', m + '-batch')])} trained"
             for m in FROZEN_STATS for t in TASK_NAMES
             if (t, "100", m) in rows and (t, "100", m + "-batch") in rows]
    if not pairs:
        return []
    return [
        "transfer/finetune.py: fine-tuning from the installed ridge head lost accuracy (the "
        "head alone beat it on every task). Cause: in training mode EfficientNet-Lite0's batch "
        "norms normalise by each batch of the new images, whose statistics differ from the "
        "ImageNet running ones the head was fitted under: on a Fashion-MNIST batch of 64 the "
        "installed head's loss was 0.56 in eval mode and 26 in training mode "
        "(benchmarks/norm_stats_probe.py). `finetune` and "
        "`adapt --finetune` now keep the trunk's running statistics (`--norm-stats frozen`, "
        "the affine weights still learn; `--norm-stats batch` is the old behaviour). Test %, "
        f"100/class, {results['grid']['ft_epochs']} epochs, frozen vs trained statistics: "
        + "; ".join(pairs) + "."]

