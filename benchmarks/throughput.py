"""Training throughput of the seed's CNN: hfsnet's trainer against a hand-written PyTorch loop.

    .venv/bin/python benchmarks/throughput.py [--data PATH] [--steps 60] [--batch-sizes 32,256]
                                              [--threads N]

Both train ``seed-cnn`` (Adam, lr 2e-4, no augmentation: the seed recipe) from the same CIFAR-10
subset for ``--steps`` steps at each batch size, in this one process. hfsnet runs its defaults
(bf16 autocast, channels_last, batches gathered from a uint8 tensor); the peer
(``benchmarks/peers/plain_loop.py``) is fp32 ``nn.Sequential`` with a ``DataLoader``. Images per
second are timed from the end of the first step to the end of the last (warm-up excluded, batch
preparation included), and the mean loss of the last quarter of the steps shows that both learn
alike. Prints a table and writes ``benchmarks/results/throughput.json``.

    .venv/bin/python benchmarks/throughput.py --profile fast [--steps 6] [--threads N]

instead profiles ``--steps`` training steps of a recipe (``fast``: hfs-air-s, batch 1024) through
the trainer's loader and model: seconds per step by kind of operator (convolutions forward and
backward, norms, activations, pooling, concatenation and casts, optimizer, loss), batch
preparation (augmentation and normalisation) timed apart, and the model's forward MACs per
image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from hfsnet.analysis.summary import summarize as summarize_model
from hfsnet.data import DataSplits, load_dataset, normalize
from hfsnet.models import create_model
from hfsnet.train import Trainer, resolve_config
from hfsnet.train.run import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from plain_loop import train_plain

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"
DEFAULT_DATA = "../shared/datasets/cifar10-jpg.tar.gz"


def rate(stamps: list[float], batch_size: int) -> float:
    """Images per second between the first and the last step's end."""
    return (len(stamps) - 1) * batch_size / (stamps[-1] - stamps[0])


def tail_loss(losses: list[float]) -> float:
    """Mean loss of the last quarter of the steps."""
    tail = losses[-max(1, len(losses) // 4):]
    return sum(tail) / len(tail)


def sample(data: DataSplits, count: int) -> torch.Tensor:
    """The same ``count`` random training images for both loops (image folders list their
    files class by class, so a prefix would hold one class only)."""
    return torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:count]


def run_hfsnet(data: DataSplits, batch_size: int, steps: int) -> dict[str, float]:
    """``steps`` steps of the seed recipe through ``Trainer`` with hfsnet's speed defaults."""
    config = resolve_config("seed", model="seed-cnn", data="given", batch_size=batch_size,
                            epochs=1, val_split=0.0, precision="bf16", channels_last=True,
                            track_test=False)
    # One epoch of exactly ``steps`` batches; the final test pass sees a token 100 images.
    train_set = data.train.subset(sample(data, steps * batch_size))
    data = dataclasses.replace(data, train=train_set, test=data.test.subset(torch.arange(100)))
    torch.manual_seed(0)
    losses: list[float] = []
    stamps: list[float] = []

    def record(_step: int, loss: float) -> None:
        losses.append(loss)
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, Path(out), data, build_model(config, data), progress=False)
        trainer.step_hooks.append(record)
        trainer.fit()
    return {"images_per_second": rate(stamps, batch_size), "tail_loss": tail_loss(losses)}


def run_plain(data: DataSplits, batch_size: int, steps: int) -> dict[str, float]:
    index = sample(data, steps * batch_size)
    x = normalize(data.train.images[index], data.mean, data.std)
    y = data.train.labels[index]
    out = train_plain(x, y, batch_size=batch_size, steps=steps)
    return {"images_per_second": rate(out["stamps"], batch_size),
            "tail_loss": tail_loss(out["losses"])}


# Profiler operator names -> the kinds the profile reports (first matching substring wins).
OP_KINDS = (("convolution_backward", "conv backward"), ("convolution", "conv forward"),
            ("batch_norm", "batch norm"), ("silu", "activation"), ("gelu", "activation"),
            ("relu", "activation"), ("max_pool", "pooling"), ("fused_sgd", "optimizer"),
            ("fused_adam", "optimizer"), ("cat", "concat + casts"), ("copy_", "concat + casts"),
            ("_to_copy", "concat + casts"), ("cross_entropy", "loss"), ("log_softmax", "loss"),
            ("nll_loss", "loss"), ("linear", "head"), ("addmm", "head"), ("mm", "head"))


def op_kind(name: str) -> str:
    return next((kind for key, kind in OP_KINDS if key in name), "other")


def profile_recipe(recipe: str, data: DataSplits, steps: int) -> dict[str, object]:
    """Seconds per training step by kind of operator, and batch preparation timed apart."""
    config = resolve_config(recipe, data="given", epochs=1)
    data = dataclasses.replace(data, test=data.test.subset(torch.arange(100)))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, Path(out), data, build_model(config, data), progress=False)
        trainer.model.train()
        batches = trainer.loader.epoch(0)
        start = time.perf_counter()
        prepared = [next(batches) for _ in range(steps + 1)]
        prepare = (time.perf_counter() - start) / (steps + 1)
        trainer._train_step(*prepared[0], 0)  # warm-up: oneDNN picks its kernels
        with torch.profiler.profile() as prof:
            start = time.perf_counter()
            for i, (x, y) in enumerate(prepared[1:], start=1):
                trainer._train_step(x, y, i)
            step = (time.perf_counter() - start) / steps
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
    return {"recipe": recipe, "batch_size": config.batch_size, "step_seconds": step,
            "prepare_seconds": prepare, "by_kind": dict(kinds), "largest_other": largest_other,
            "macs_per_image": macs,
            "train_flop_per_second": 3 * 2 * macs * config.batch_size / step}


def print_profile(p: dict[str, object]) -> None:
    print(f"{p['recipe']}: batch {p['batch_size']}, {p['step_seconds']:.3f} s per step "
          f"(profiled), batch preparation {p['prepare_seconds']:.3f} s; "
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
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--profile", metavar="RECIPE", help="profile RECIPE's training step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile = profile_recipe(args.profile, load_dataset(args.data), args.steps)
        print_profile(profile)
        path = RESULTS.with_name(f"profile-{args.profile}.json")
        path.write_text(json.dumps(profile, indent=2) + "\n")
        print(f"wrote {path}")
        return
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    data = load_dataset(args.data, limit_train=args.steps * max(sizes))
    rows = []
    for batch_size in sizes:
        plain = run_plain(data, batch_size, args.steps)
        ours = run_hfsnet(data, batch_size, args.steps)
        rows.append({"batch_size": batch_size, "steps": args.steps, "plain": plain,
                     "hfsnet": ours,
                     "speedup": ours["images_per_second"] / plain["images_per_second"]})
    print(f"{'batch':>5} {'plain img/s':>12} {'hfsnet img/s':>13} {'speedup':>8} "
          f"{'plain loss':>11} {'hfsnet loss':>12}")
    for r in rows:
        print(f"{r['batch_size']:>5} {r['plain']['images_per_second']:>12.0f} "
              f"{r['hfsnet']['images_per_second']:>13.0f} {r['speedup']:>7.2f}x "
              f"{r['plain']['tail_loss']:>11.4f} {r['hfsnet']['tail_loss']:>12.4f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "load_average": list(_load_average()), "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def _load_average() -> tuple[float, float, float]:
    """The 1/5/15-minute load: numbers taken under other jobs' load are not quiet numbers."""
    try:
        import os
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


if __name__ == "__main__":
    main()
