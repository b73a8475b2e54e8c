"""Training throughput of the seed's CNN: hfsnet's trainer against a hand-written PyTorch loop,
like for like.

    .venv/bin/python benchmarks/throughput.py [--data PATH] [--steps 60] [--batch-sizes 32,256]
                                              [--repeats 3] [--threads N] [--precisions fp32]
                                              [--results PATH]

Both train ``seed-cnn`` (Adam, lr 2e-4, no augmentation: the seed recipe) from the same CIFAR-10
subset for ``--steps`` steps, in this one process, with the same threads, at every batch size
and in each of the four settings fp32/bf16 x NCHW/channels-last: the trainer through
``Trainer`` (batches gathered from a uint8 tensor), the peer (``benchmarks/peers/plain_loop.py``)
as ``nn.Sequential`` with a ``DataLoader``, bf16 autocast and channels_last where the row says
so. Runs alternate (plain, hfsnet, plain, hfsnet, ...; each repeat walks all four settings) so
that a change of machine load hits both sides alike; a row gives the median, the range and the
median of the per-pair ratios. Images per second are timed from the end of the first step to
the end of the last (warm-up excluded, batch preparation included); the mean training loss
shows that both learn alike. The load average at the start and the end says whether the
numbers are quiet. Prints a table and writes ``benchmarks/results/throughput.json``.

    .venv/bin/python benchmarks/throughput.py --profile fast [--steps 6] [--threads N]

instead profiles ``--steps`` training steps of a recipe (``fast``: air-plain-s, batch 1024)
through the trainer's loader and model, with freed memory retained as `hfsnet train` does:
seconds per step by kind of operator (convolutions forward and backward, norms, activations,
pooling, concatenation and casts, optimizer, loss), batch preparation (augmentation and
normalisation) timed apart, the model's forward MACs per image, and the same steps timed
without the profiler first, with the minor page faults of both: where the profiled run faults
and the plain one does not, the profile's fills and copies are the profiler's cost, not the
step's (``--results``: default ``results/profile-RECIPE[-PRECISION].json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hfsnet.analysis.summary import summarize as summarize_model
from hfsnet.data import DataSplits, load_dataset, normalize
from hfsnet.models import create_model
from hfsnet.train import Trainer, resolve_config
from hfsnet.train.allocator import allocator_in_effect, retain_freed_memory
from hfsnet.train.run import build_model
from hfsnet.train.runtime import cpu_description

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from plain_loop import train_plain

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"
DEFAULT_DATA = "../shared/datasets/cifar10-jpg.tar.gz"


def rate(stamps: list[float], batch_size: int) -> float:
    """Images per second between the first and the last step's end."""
    return (len(stamps) - 1) * batch_size / (stamps[-1] - stamps[0])


def sample(data: DataSplits, count: int) -> torch.Tensor:
    """The same ``count`` random training images for both loops (image folders list their
    files class by class, so a prefix would hold one class only)."""
    return torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:count]


# (precision, channels_last) of each row; the last is what a user gets without flags.
SETTINGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
USER_DEFAULT = ("bf16", True)
BASELINE = ("fp32", False)  # the plain loop as most people write it


def setting_name(precision: str, channels_last: bool) -> str:
    return f"{precision} {'channels-last' if channels_last else 'NCHW'}"


def stamp_batches(trainer: Trainer, stamps: list[float]) -> None:
    """Record ``time.perf_counter`` whenever the trainer asks for its next batch, which is when
    its previous step (syncs, bookkeeping and all) has ended; no step hook, which would make
    every step sync to hand it the loss."""
    epoch = trainer.loader.epoch

    def stamped(*args: Any, **kwargs: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in epoch(*args, **kwargs):
            yield batch
            stamps.append(time.perf_counter())

    trainer.loader.epoch = stamped  # type: ignore[method-assign]


def run_hfsnet(data: DataSplits, batch_size: int, steps: int, precision: str,
               channels_last: bool) -> dict[str, float]:
    """``steps`` steps of the seed recipe through ``Trainer`` at the given settings."""
    config = resolve_config("seed", model="seed-cnn", data="given", batch_size=batch_size,
                            epochs=1, val_split=0.0, precision=precision,
                            channels_last=channels_last, track_test=False)
    # One epoch of exactly ``steps`` batches; the final test pass sees a token 100 images.
    train_set = data.train.subset(sample(data, steps * batch_size))
    data = dataclasses.replace(data, train=train_set, test=data.test.subset(torch.arange(100)))
    torch.manual_seed(0)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, Path(out), data, build_model(config, data), progress=False)
        stamp_batches(trainer, stamps)
        result = trainer.fit()
    return {"images_per_second": rate(stamps, batch_size),
            "mean_loss": result.history[0]["train_loss"]}


def run_plain(data: DataSplits, batch_size: int, steps: int, precision: str,
              channels_last: bool) -> dict[str, float]:
    index = sample(data, steps * batch_size)
    x = normalize(data.train.images[index], data.mean, data.std)
    y = data.train.labels[index]
    out = train_plain(x, y, batch_size=batch_size, steps=steps, precision=precision,
                      channels_last=channels_last)
    losses = out["losses"]
    return {"images_per_second": rate(out["stamps"], batch_size),
            "mean_loss": sum(losses) / len(losses)}


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def measure(data: DataSplits, sizes: list[int], steps: int, repeats: int,
            precisions: tuple[str, ...] = ("fp32", "bf16")) -> list[dict[str, Any]]:
    """One row per (batch size, setting of ``precisions``) from ``repeats`` interleaved
    plain/hfsnet pairs."""
    runs: dict[tuple[int, str, bool], dict[str, list[dict[str, float]]]] = {}
    for batch_size in sizes:
        for _ in range(repeats):
            for precision, channels_last in SETTINGS:
                if precision not in precisions:
                    continue
                key = (batch_size, precision, channels_last)
                pair = runs.setdefault(key, {"plain": [], "hfsnet": []})
                pair["plain"].append(run_plain(data, batch_size, steps, precision,
                                               channels_last))
                pair["hfsnet"].append(run_hfsnet(data, batch_size, steps, precision,
                                                 channels_last))
    rows = []
    for (batch_size, precision, channels_last), pair in runs.items():
        plain = [r["images_per_second"] for r in pair["plain"]]
        ours = [r["images_per_second"] for r in pair["hfsnet"]]
        rows.append({
            "batch_size": batch_size, "precision": precision, "channels_last": channels_last,
            "steps": steps, "plain": spread(plain), "hfsnet": spread(ours),
            "speedup": statistics.median(ours) / statistics.median(plain),
            "pair_speedups": spread([h / p for h, p in zip(ours, plain, strict=True)]),
            "plain_mean_loss": pair["plain"][-1]["mean_loss"],
            "hfsnet_mean_loss": pair["hfsnet"][-1]["mean_loss"],
        })
    return rows


def defaults_vs_baseline(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per batch size: hfsnet at its user defaults over the plain loop in fp32 NCHW (medians);
    empty when the defaults' setting was not measured."""
    if not any((r["precision"], r["channels_last"]) == USER_DEFAULT for r in rows):
        return {}

    def median(batch_size: int, setting: tuple[str, bool], side: str) -> float:
        row = next(r for r in rows if r["batch_size"] == batch_size
                   and (r["precision"], r["channels_last"]) == setting)
        return row[side]["median"]

    sizes = sorted({r["batch_size"] for r in rows})
    return {str(b): median(b, USER_DEFAULT, "hfsnet") / median(b, BASELINE, "plain")
            for b in sizes}


def print_rows(rows: list[dict[str, Any]], defaults: dict[str, float]) -> None:
    print(f"{'batch':>5} {'setting':>18} {'plain img/s':>18} {'hfsnet img/s':>18} "
          f"{'speedup':>8} {'pairs':>11} {'plain loss':>10} {'hfsnet loss':>11}")
    for r in rows:
        p, h, pairs = r["plain"], r["hfsnet"], r["pair_speedups"]
        print(f"{r['batch_size']:>5} {setting_name(r['precision'], r['channels_last']):>18} "
              f"{p['median']:>6.0f} ({p['min']:>4.0f}-{p['max']:<4.0f}) "
              f"{h['median']:>6.0f} ({h['min']:>4.0f}-{h['max']:<4.0f}) "
              f"{r['speedup']:>7.2f}x {pairs['min']:>4.2f}-{pairs['max']:<4.2f}x "
              f"{r['plain_mean_loss']:>10.4f} {r['hfsnet_mean_loss']:>11.4f}")
    for batch_size, ratio in defaults.items():
        print(f"batch {batch_size}: hfsnet {setting_name(*USER_DEFAULT)} (the defaults) is "
              f"{ratio:.2f}x the plain loop in {setting_name(*BASELINE)}")


# Profiler operator names -> the kinds the profile reports (first matching substring wins).
OP_KINDS = (("convolution_backward", "conv backward"), ("convolution", "conv forward"),
            ("batch_norm", "batch norm"), ("silu", "activation"), ("gelu", "activation"),
            ("relu", "activation"), ("max_pool", "pooling"), ("fused_sgd", "optimizer"),
            ("fused_adam", "optimizer"), ("cat", "concat + casts"), ("copy_", "concat + casts"),
            ("_to_copy", "concat + casts"), ("cross_entropy", "loss"), ("log_softmax", "loss"),
            ("nll_loss", "loss"), ("linear", "head"), ("addmm", "head"), ("mm", "head"))


def op_kind(name: str) -> str:
    return next((kind for key, kind in OP_KINDS if key in name), "other")


def profile_recipe(recipe: str, data: DataSplits, steps: int,
                   precision: str | None = None) -> dict[str, object]:
    """Seconds per training step by kind of operator, and batch preparation timed apart;
    ``precision`` overrides the recipe's."""
    config = resolve_config(recipe, data="given", epochs=1, precision=precision)
    data = dataclasses.replace(data, test=data.test.subset(torch.arange(100)))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, Path(out), data, build_model(config, data), progress=False)
        trainer.model.train()
        batches = trainer.loader.epoch(0)
        start = time.perf_counter()
        prepared = [next(batches) for _ in range(steps + 1)]
        prepare = (time.perf_counter() - start) / (steps + 1)
        trainer._train_step(*prepared[0], 0)  # warm-up: oneDNN picks its kernels

        def timed_steps() -> tuple[float, float]:
            """Seconds and minor page faults per step over the prepared batches."""
            faults, start = _minor_faults(), time.perf_counter()
            for i, (x, y) in enumerate(prepared[1:], start=1):
                trainer._train_step(x, y, i)
            return (time.perf_counter() - start) / steps, (_minor_faults() - faults) / steps

        # The same steps unprofiled first: the profiler's own allocations break the reuse of
        # freed memory, so under it large fills fault pages in that a plain run does not.
        plain_step, plain_faults = timed_steps()
        with torch.profiler.profile() as prof:
            step, step_faults = timed_steps()
    kinds: dict[str, float] = defaultdict(float)
    other: dict[str, float] = {}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6 / steps
        kinds[op_kind(event.key)] += seconds
        if op_kind(event.key) == "other":
            other[event.key] = seconds
    largest_other = dict(sorted(other.items(), key=lambda kv: -kv[1])[:4])
    model = create_model(config.model, image_size=data.image_size[0])
    macs = summarize_model(model, (data.in_channels, *data.image_size)).totals.macs
    return {"recipe": recipe, "precision": config.precision, "load_average": os.getloadavg(),
            "batch_size": config.batch_size, "step_seconds": step,
            "page_faults_per_step": step_faults, "unprofiled_step_seconds": plain_step,
            "unprofiled_page_faults_per_step": plain_faults, "allocator": allocator_in_effect(),
            "prepare_seconds": prepare, "by_kind": dict(kinds), "largest_other": largest_other,
            "macs_per_image": macs,
            "train_flop_per_second": 3 * 2 * macs * config.batch_size / step}


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def print_profile(p: dict[str, object]) -> None:
    print(f"{p['recipe']} ({p['precision']}): batch {p['batch_size']}, "
          f"{p['step_seconds']:.3f} s per step "
          f"(profiled, {p['page_faults_per_step']:,.0f} page faults a step; unprofiled "
          f"{p['unprofiled_step_seconds']:.3f} s, {p['unprofiled_page_faults_per_step']:,.0f} "
          f"faults), batch preparation {p['prepare_seconds']:.3f} s; "
          f"{p['macs_per_image'] / 1e6:.1f} MMACs/image forward, "
          f"{p['train_flop_per_second'] / 1e9:.0f} GFLOP/s achieved (3x forward FLOPs)")
    total = sum(p["by_kind"].values())
    for kind, seconds in sorted(p["by_kind"].items(), key=lambda kv: -kv[1]):
        print(f"  {kind:>16} {1000 * seconds:8.1f} ms {100 * seconds / total:5.1f}%")
    print("  largest in other: " + ", ".join(f"{k} {1000 * v:.1f} ms"
                                             for k, v in p["largest_other"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int,
                        help="steps per run (default 60); with --profile, steps profiled "
                        "(default 6: a batch of 1024 has 48 steps in an epoch)")
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved pairs per row")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--profile", metavar="RECIPE", help="profile RECIPE's training step")
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="with --profile: override the recipe's precision")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="the precisions compared (fp32 alone where bf16 is emulated: "
                        "~10x slower on an AVX2-only CPU)")
    parser.add_argument("--results", type=Path,
                        help="default: results/throughput.json, or with --profile "
                        "results/profile-RECIPE[-PRECISION].json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        retain_freed_memory()  # as every `hfsnet` command does (HFSNET_MALLOC=system: not)
        profile = profile_recipe(args.profile, load_dataset(args.data), args.steps or 6,
                                 args.precision)
        print_profile(profile)
        suffix = f"-{args.precision}" if args.precision else ""
        path = args.results or RESULTS.with_name(f"profile-{args.profile}{suffix}.json")
        path.write_text(json.dumps(profile, indent=2) + "\n")
        print(f"wrote {path}")
        return
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.steps = args.steps or 60
    args.results = args.results or RESULTS
    load_start = _load_average()
    data = load_dataset(args.data, limit_train=args.steps * max(sizes))
    rows = measure(data, sizes, args.steps, args.repeats, tuple(args.precisions.split(",")))
    defaults = defaults_vs_baseline(rows)
    load_end = _load_average()
    print_rows(rows, defaults)
    print(f"load average (1/5/15 min): {load_start} at the start, {load_end} at the end")
    args.results.parent.mkdir(exist_ok=True)
    args.results.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "repeats": args.repeats,
        "load_average_start": list(load_start), "load_average_end": list(load_end),
        "rows": rows, "defaults_vs_plain_fp32_nchw": defaults,
        "cpu": cpu_description(),
    }, indent=2) + "\n")
    print(f"wrote {args.results}")


def _load_average() -> tuple[float, float, float]:
    """The 1/5/15-minute load: numbers taken under other jobs' load are not quiet numbers."""
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return (float("nan"),) * 3


if __name__ == "__main__":
    main()
