"""Tune only the top of a frozen trunk, on cached maps: how much of fine-tuning's lead over a
frozen head do the top blocks alone recover?

EfficientNet-Lite0 (ImageNet weights, every block tapped) at ``--side`` px on CIFAR-10, 100
training images per class (``few_shot`` with the seed) and the whole test split, the setting
where the benchmark's best head (benchmarks/adapt.py) stays 3.8 points behind the 15-epoch
fine-tune at 128 px. The blocks before ``--from-block`` run once over every image (and the
mirror of every training image); their output maps and every earlier level's pooled
descriptor are cached in memory. Then only blocks ``--from-block`` on, the head conv and the
fused multi-level linear head train, for ``--epochs`` epochs on the cached maps (AdamW, the
head at ``--head-lr``, the tuned blocks at 0.2x, one-cycle, batch 64, batch norms frozen, as
the ``finetune`` recipe), and the test maps are scored once at the end. ``--from-block 16``
tunes the head conv alone; 0 would be a whole fine-tune without crops.

    .venv/bin/python benchmarks/tune_top.py --side 128 --from-block 11 8 5 --seed 0

Prints and appends one JSON line per run to ``--results``: test accuracy and the seconds of
the bottom pass, the training and the test scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from hfsnet.data import load_dataset
from hfsnet.models import create_model
from hfsnet.models.efficientnet import resize_to_side
from hfsnet.train.allocator import allocator_in_effect, retain_freed_memory
from hfsnet.train.runtime import cpu_description
from hfsnet.transfer.subsets import few_shot

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared/datasets/cifar10-jpg.tar.gz"
RESULTS = REPO / "benchmarks/results/tune_top-epyc-avx2.jsonl"
BATCH = 64
TEST_BATCH = 250
TRUNK_RATE = 0.2  # the tuned blocks' learning rate, a fraction of the head's (finetune recipe)


def normalized(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    mean = torch.tensor(model.preprocessing["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing["std"]).view(1, 3, 1, 1)
    return ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def bottom_pass(model: nn.Module, images: torch.Tensor,
                start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The map entering block ``start`` and the pooled output of every level before it."""
    net = model.net
    maps, pooled = [], []
    for i in range(0, len(images), TEST_BATCH):
        x = resize_to_side(normalized(images[i : i + TEST_BATCH], model), model.options.image_size)
        x = net._swish(net._bn0(net._conv_stem(x)))
        levels = []
        for block in list(net._blocks)[:start]:
            x = block(x)
            levels.append(x.mean((2, 3)))
        maps.append(x.half())
        pooled.append(torch.cat(levels, 1) if levels else x.new_zeros(len(x), 0))
    return torch.cat(maps), torch.cat(pooled)


class Top(nn.Module):
    """Blocks ``start`` on, the head conv and the model's fused head, reading the cached map
    and the cached pooled lower levels (fed to the head as 1x1 maps: gap of a 1x1 map is the
    value itself)."""

    def __init__(self, model: nn.Module, start: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(list(model.net._blocks)[start:])
        self.conv_head, self.bn1, self.act = model.net._conv_head, model.net._bn1, model.net._swish
        self.head = model.head
        self.lower = model.level_channels[:start]

    def forward(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        levels = [p[:, :, None, None] for p in pooled.split(self.lower, 1)] if self.lower else []
        for block in self.blocks:
            x = block(x)
            levels.append(x)
        levels.append(self.act(self.bn1(self.conv_head(x))))
        return self.head(levels)


def tune(model: nn.Module, start: int, train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
         epochs: int, head_lr: float, seed: int) -> tuple[Top, float]:
    top = Top(model, start)
    top.eval()  # batch norms keep the ImageNet statistics; no stochastic depth
    head_params = list(top.head.parameters())
    head_ids = {id(p) for p in head_params}
    trunk_params = [p for p in top.parameters() if id(p) not in head_ids]
    groups = [{"params": head_params, "lr": head_lr}]
    if trunk_params:
        groups.append({"params": trunk_params, "lr": TRUNK_RATE * head_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.05)
    maps, pooled, labels = train
    steps = epochs * ((len(labels) + BATCH - 1) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.25)
    generator = torch.Generator().manual_seed(seed)
    start_time = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(order), BATCH):
            rows = order[i : i + BATCH]
            loss = nn.functional.cross_entropy(
                top(maps[rows].float().contiguous(memory_format=torch.channels_last),
                    pooled[rows]), labels[rows], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    return top, time.perf_counter() - start_time


@torch.inference_mode()
def score(top: nn.Module, maps: torch.Tensor, pooled: torch.Tensor,
          labels: torch.Tensor) -> float:
    correct = 0
    for i in range(0, len(labels), TEST_BATCH):
        logits = top(maps[i : i + TEST_BATCH].float().contiguous(
            memory_format=torch.channels_last), pooled[i : i + TEST_BATCH])
        correct += int((logits.argmax(1) == labels[i : i + TEST_BATCH]).sum())
    return correct / len(labels)


def run(side: int, start: int, epochs: int, head_lr: float, seed: int) -> dict:
    process_start = time.perf_counter()
    data = few_shot(load_dataset(str(DATA)), 100, seed)
    torch.manual_seed(seed)
    model = create_model("efficientnet-lite0", num_classes=data.num_classes, image_size=side,
                         taps="blocks").eval()
    model.to(memory_format=torch.channels_last)
    t = time.perf_counter()
    train_images = torch.cat([data.train.images, data.train.images.flip(-1)])
    train_maps, train_pooled = bottom_pass(model, train_images, start)
    test_maps, test_pooled = bottom_pass(model, data.test.images, start)
    bottom_seconds = time.perf_counter() - t
    labels = torch.cat([data.train.labels, data.train.labels])
    top, train_seconds = tune(model, start, (train_maps, train_pooled, labels), epochs, head_lr,
                              seed)
    t = time.perf_counter()
    acc = score(top, test_maps, test_pooled, data.test.labels)
    return {"side": side, "from_block": start, "epochs": epochs, "head_lr": head_lr,
            "seed": seed, "test_acc": acc, "bottom_seconds": bottom_seconds,
            "train_seconds": train_seconds, "score_seconds": time.perf_counter() - t,
            "seconds": time.perf_counter() - process_start,
            "cached_map_shape": list(train_maps.shape[1:]), "cpu": cpu_description(),
            "load_average": list(os.getloadavg()), "threads": torch.get_num_threads(),
            "allocator": allocator_in_effect(),
            "command": " ".join([".venv/bin/python", *map(str, sys.argv)])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--from-block", type=int, nargs="+", default=[11])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--head-lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    retain_freed_memory()
    for start in args.from_block:
        row = run(args.side, start, args.epochs, args.head_lr, args.seed)
        print(json.dumps(row), flush=True)
        with args.results.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
