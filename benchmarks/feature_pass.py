"""Images per second of EfficientNet-Lite0's frozen feature pass: the unmodified backbone against
hfsnet's fast pass (``hfsnet.transfer.frozen.FrozenTrunk``).

    .venv/bin/python benchmarks/feature_pass.py [--images 512] [--batch-size 64] [--sizes 64,224]
                                                [--repeats 3] [--threads N]

At each input side the pretrained net (built for that side, so no resize) computes every level
of ``forward_features`` (``taps=stages``) for the same ``--images`` random images, in batches:

- ``unmodified``: fp32, contiguous (NCHW), eval, ``no_grad``: the modules as the package builds
  them;
- ``folded-fp32``: batch norms folded, channels-last, fp32 (what an fp32 cache pass runs);
- ``folded-bf16``: the same in bf16 autocast;
- ``compiled-fp32``, ``compiled-bf16``: the folded passes compiled by inductor (with freezing);
  the compile time (the first batch) is reported apart and excluded from the rate.

The variants run interleaved, ``--repeats`` times each, and the median rate is reported; the load
average before and after is recorded because the development machine is shared. Writes
``benchmarks/results/feature_pass.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hfsnet.models.efficientnet import EfficientNetLite, EfficientNetOptions
from hfsnet.transfer.frozen import FrozenTrunk

RESULTS = Path(__file__).resolve().parent / "results" / "feature_pass.json"
Pass = Callable[[torch.Tensor], list[torch.Tensor]]


def unmodified(model: EfficientNetLite) -> Pass:
    @torch.no_grad()
    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return model.forward_features(x.contiguous())

    return run


def time_pass(run: Pass, batches: list[torch.Tensor]) -> float:
    """Images per second over ``batches``."""
    start = time.perf_counter()
    for x in batches:
        run(x)
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def bench_size(side: int, n_images: int, batch_size: int, repeats: int) -> dict:
    model = EfficientNetLite(options=EfficientNetOptions(image_size=side)).eval()
    generator = torch.Generator().manual_seed(side)
    images = torch.randn(n_images, 3, side, side, generator=generator)
    batches = list(images.split(batch_size))
    variants: dict[str, Pass] = {
        "unmodified": unmodified(model),
        "folded-fp32": FrozenTrunk(model, precision="fp32"),
        "folded-bf16": FrozenTrunk(model, precision="bf16"),
    }
    compile_seconds = {}
    for precision in ("fp32", "bf16"):
        compiled = FrozenTrunk(model, precision=precision, compile="on")
        start = time.perf_counter()
        compiled(batches[0])  # folds, checks and compiles
        compile_seconds[precision] = time.perf_counter() - start
        variants[f"compiled-{precision}"] = compiled
    for name, run in variants.items():
        if not name.startswith("compiled"):
            run(batches[0])  # warm-up: the fast passes fold and check on their first batch
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            rates[name].append(time_pass(run, batches))
    median = {name: statistics.median(r) for name, r in rates.items()}
    base = median["unmodified"]
    return {"side": side, "images": n_images, "batch_size": batch_size,
            "images_per_second": median, "all_rates": rates,
            "speedup": {name: rate / base for name, rate in median.items()},
            "compile_seconds": compile_seconds,
            "folded": variants["folded-bf16"].report.folded}  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sizes", default="64,224")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = [bench_size(int(s), args.images, args.batch_size, args.repeats)
               for s in args.sizes.split(",")]
    load_after = os.getloadavg()
    contended = max(load_before[0], load_after[0]) > os.cpu_count() / 2  # type: ignore[operator]
    report = {"machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "load_average_before": load_before,
              "load_average_after": load_after,
              "contended": contended,
              "note": "shared machine: other engineers ran tests during the run" if contended
              else "", "results": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        rates = ", ".join(f"{k} {v:.0f} img/s ({r['speedup'][k]:.2f}x)"
                          for k, v in r["images_per_second"].items())
        compiles = ", ".join(f"{k} {v:.0f} s" for k, v in r["compile_seconds"].items())
        print(f"{r['side']} px: {rates}; compile {compiles}")
    print(f"load average {load_before} -> {load_after}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
