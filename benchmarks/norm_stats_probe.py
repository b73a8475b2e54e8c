"""Why fine-tuning a pretrained trunk should keep its batch-norm statistics: one batch, two modes.

    .venv/bin/python benchmarks/norm_stats_probe.py [--task fashion-mnist] [--seed 0]

Fits the adapt benchmark's ridge-all head (100 images per class) on EfficientNet-Lite0's cached
features, installs it on the trunk and scores one batch of 64 training images through the whole
model twice: in eval mode (batch norms use their ImageNet running statistics, as the cached
features did) and in training mode (they normalise by the batch, as ``--norm-stats batch``
fine-tuning does). Uses and, if missing, builds the benchmark's cache under
``runs/adapt-bench``. Results: ``benchmarks/results/norm_stats_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import adapt as bench  # benchmarks/ is not a package

from hfsnet.models.level_head import install_head
from hfsnet.transfer.fit import fit_cached_head
from hfsnet.transfer.source import for_trunk
from hfsnet.transfer.subsets import few_shot

RESULTS = Path(__file__).resolve().parent / "results" / "norm_stats_probe.json"
BATCH = 64


def loss_and_accuracy(model: torch.nn.Module, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fashion-mnist", choices=sorted(bench.TASKS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = bench.load_task(args.task)
    cache = bench.task_cache(args.task, data, bench.REPO / "runs/adapt-bench")
    model, source = bench.build_trunk(args.task, data.num_classes)
    options, levels, pool = bench.head_options("ridge-all", "100", args.seed)
    head, _ = fit_cached_head(cache.view("100", args.seed, levels, pool), cache.channels, options)
    install_head(model, head)
    target = for_trunk(source, few_shot(data, bench.PER_CLASS, args.seed))
    rows = torch.randperm(len(target.train), generator=torch.Generator().manual_seed(args.seed))
    images, labels = target.train.images[rows[:BATCH]], target.train.labels[rows[:BATCH]]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (target.mean, target.std))
    x = (images.float() / 255 - mean) / std
    eval_loss, eval_acc = loss_and_accuracy(model.eval(), x, labels)
    train_loss, train_acc = loss_and_accuracy(model.train(), x, labels)
    print(f"{args.task}, {BATCH} training images, the installed ridge head: eval mode loss "
          f"{eval_loss:.3f} accuracy {eval_acc:.3f}; training mode (batch statistics) loss "
          f"{train_loss:.3f} accuracy {train_acc:.3f}")
    RESULTS.write_text(json.dumps({
        "task": args.task, "seed": args.seed, "batch": BATCH, "load_average": os.getloadavg(),
        "eval_mode": {"loss": eval_loss, "accuracy": eval_acc},
        "train_mode": {"loss": train_loss, "accuracy": train_acc}}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
