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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from hfsnet.data import DataSplits, load_dataset, normalize
from hfsnet.train import Trainer, resolve_config
from hfsnet.train.loop import build_model

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-sizes", default="32,256")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
