"""The price of feature sharing per training step: hfs-air-s against its plain twin, side by side.

    .venv/bin/python benchmarks/sharing_step.py [--batch-size 1024] [--rounds 4] [--threads 1]
        [--variants air-plain-s,hfs-air-s] [--compile] [--precision bf16] [--results PATH]

Times one SGD training step (bf16 autocast, or fp32 with ``--precision fp32``, the precision
``--precision auto`` picks where bf16 is emulated; channels-last, the `fast` recipe's layout) of

    air-plain-s   no phi, head on the last stage (airbench's net)
    fuse-only     no phi, head fusing every stage
    share-only    phi, head on the last stage
    hfs-air-s     phi and the fused head
    hfs-air-s-cat phi applied to torch.cat([a, b]), as before ConcatPointwise

on one random batch, the variants interleaved round by round so that load on the machine hits
them alike; the minimum over rounds is kept. Writes ``benchmarks/results/sharing_step.json``
with each variant's milliseconds per step and its ratio to the first variant. ``hfs-air-m``,
``air-plain-m`` (fast-long's nets), ``hfs-air`` and ``air-plain`` (the peer's widths) can be
named too.

With ``--compile`` every variant also runs as ``torch.compile(model)`` (inductor, the whole
training step's forward and backward), recorded with its compile time (its first two steps,
less two eager steps): a compiled step pays for itself after compile_seconds / (eager -
compiled) steps.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hfsnet.models import create_model
from hfsnet.models.hfs_air import PooledDenseStage
from hfsnet.train.runtime import cpu_description

RESULTS = Path(__file__).resolve().parent / "results" / "sharing_step.json"
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "air-plain-s": ("air-plain-s", {}),
    "fuse-only": ("hfs-air-s", {"share": False}),
    "share-only": ("hfs-air-s", {"fuse": False}),
    "hfs-air-s": ("hfs-air-s", {}),
    "hfs-air-s-cat": ("hfs-air-s", {}),
    "hfs-air-m": ("hfs-air-m", {}),
    "hfs-air": ("hfs-air", {}),
    "air-plain": ("air-plain", {}),
    "air-plain-m": ("air-plain-m", {}),
}


def concatenating_forward(stage: PooledDenseStage, x: torch.Tensor) -> torch.Tensor:
    a = stage.first(x)
    conv, norm, act = stage.phi
    return act(norm(F.conv2d(torch.cat([a, stage.second(a)], 1), conv.weight)))


def build(variant: str) -> nn.Module:
    name, options = VARIANTS[variant]
    model = create_model(name, **options)
    if variant.endswith("-cat"):
        for stage in model.blocks:
            stage.forward = concatenating_forward.__get__(stage)
    return model.to(memory_format=torch.channels_last)


def timed_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               precision: str) -> Callable[[], float]:
    """One SGD training step of ``model`` on (x, y) in ``precision``, returning its seconds."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.85, nesterov=True)

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default="air-plain-s,fuse-only,share-only,hfs-air-s,"
                                              "hfs-air-s-cat")
    parser.add_argument("--compile", action="store_true",
                        help="also time every variant under torch.compile")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    steps, compile_seconds = {}, {}
    for variant in args.variants.split(","):
        steps[variant] = timed_step(build(variant), x, y, args.precision)
        eager = steps[variant]() + steps[variant]()  # warm-up: oneDNN picks its kernels
        if args.compile:
            compiled = timed_step(torch.compile(build(variant)), x, y, args.precision)
            compile_seconds[f"{variant}+compile"] = compiled() + compiled() - eager
            steps[f"{variant}+compile"] = compiled
    seconds: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(args.rounds):
        for variant, step in steps.items():
            seconds[variant].append(step())
    base = min(next(iter(seconds.values())))
    rows = {v: {"ms_per_step": 1000 * min(s), "images_per_second": args.batch_size / min(s),
                "ratio_to_first": min(s) / base, "compile_seconds": compile_seconds.get(v)}
            for v, s in seconds.items()}
    for variant, row in rows.items():
        compiled = ("" if row["compile_seconds"] is None
                    else f", compiled in {row['compile_seconds']:.0f} s")
        print(f"{variant:>18} {row['ms_per_step']:8.1f} ms/step {row['images_per_second']:6.0f} "
              f"img/s {row['ratio_to_first']:5.2f}x the first{compiled}")
    args.results.parent.mkdir(exist_ok=True)
    args.results.write_text(json.dumps({
        "batch_size": args.batch_size, "rounds": args.rounds, "threads": args.threads,
        "precision": args.precision,
        "load_average_before": os.getloadavg()[0], "torch": torch.__version__,
        "cpu": cpu_description(), "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
