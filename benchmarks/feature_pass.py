"""Images per second of EfficientNet-Lite0's frozen feature pass: the unmodified backbone against
hfsnet's fast pass (``hfsnet.transfer.frozen.FrozenTrunk``).

    .venv/bin/python benchmarks/feature_pass.py [--images 512] [--batch-size 64] [--sizes 64,224]
        [--repeats 3] [--threads N] [--variants unmodified,folded-fp32,...]
        [--allocators retain,system] [--results PATH]

At each input side the pretrained net (built for that side, so no resize) computes every level
of ``forward_features`` (``taps=stages``) for the same ``--images`` random images, in batches:

- ``unmodified``: fp32, contiguous (NCHW), eval, ``no_grad``: the modules as the package builds
  them;
- ``folded-fp32``: batch norms folded, symmetric 'same' paddings moved into the convolutions,
  channels-last, fp32 (what an fp32 cache pass runs);
- ``folded-bf16``: the same in bf16 autocast;
- ``padded-fp32``: ``folded-fp32`` with the package's pad-then-convolve kept (``unpad=False``:
  what moving the paddings buys);
- ``compiled-fp32``, ``compiled-bf16``: the folded passes compiled by inductor (with freezing);
  the compile time (the first batch) is reported apart and excluded from the rate.

Each measurement runs in a fresh process per allocator mode (``HFSNET_MALLOC``: ``retain``, what
every ``hfsnet`` command sets up, or glibc's ``system`` defaults; ``hfsnet.train.allocator``),
``--repeats`` processes per mode, the modes interleaved; inside a process the variants run one
after the other. The median rate and the median minor page faults per pass are reported; the
load average before and after is recorded because the development machine is shared. Writes
``--results`` (default ``benchmarks/results/feature_pass.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import torch

from hfsnet.models.efficientnet import EfficientNetLite, EfficientNetOptions
from hfsnet.train.allocator import CHOICES, retain_freed_memory
from hfsnet.train.runtime import cpu_description
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


VARIANTS = ("unmodified", "folded-fp32", "folded-bf16", "padded-fp32", "compiled-fp32",
            "compiled-bf16")


def build_variants(model: EfficientNetLite, names: Sequence[str],
                   first: torch.Tensor) -> tuple[dict[str, Pass], dict[str, float]]:
    """The passes named, each run once on ``first`` (the fast passes fold and check on their
    first batch; the compiled ones compile, timed apart)."""
    variants: dict[str, Pass] = {}
    compile_seconds = {}
    for name in names:
        if name == "unmodified":
            variants[name] = unmodified(model)
            variants[name](first)  # warm-up, as the others get
        else:
            kind, precision = name.split("-")
            trunk = FrozenTrunk(model, precision=precision,
                                compile="on" if kind == "compiled" else "off",
                                unpad=kind != "padded")
            start = time.perf_counter()
            trunk(first)
            if kind == "compiled":
                compile_seconds[precision] = time.perf_counter() - start
            variants[name] = trunk
    return variants, compile_seconds


def bench_size(side: int, n_images: int, batch_size: int, names: Sequence[str]) -> dict:
    """Each variant's rate and page faults over one pass of the images (a process measures
    once; ``--repeats`` runs more processes)."""
    model = EfficientNetLite(options=EfficientNetOptions(image_size=side)).eval()
    generator = torch.Generator().manual_seed(side)
    images = torch.randn(n_images, 3, side, side, generator=generator)
    batches = list(images.split(batch_size))
    variants, compile_seconds = build_variants(model, names, batches[0])
    rates: dict[str, list[float]] = {}
    faults: dict[str, list[int]] = {}
    for name, run in variants.items():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        rates[name] = [time_pass(run, batches)]
        faults[name] = [resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]
    return {"side": side, "images": n_images, "batch_size": batch_size, "all_rates": rates,
            "page_faults": faults, "compile_seconds": compile_seconds}


def summarize(side_runs: list[dict]) -> dict:
    """One size's runs (one per child process of an allocator) merged: median rates, speedups
    over the unmodified pass (where it ran) and median page faults per pass."""
    merged = {**side_runs[0], "all_rates": {}, "page_faults": {}}
    for run in side_runs:
        for key in ("all_rates", "page_faults"):
            for name, values in run[key].items():
                merged[key].setdefault(name, []).extend(values)
    median = {name: statistics.median(r) for name, r in merged["all_rates"].items()}
    merged["images_per_second"] = median
    merged["median_page_faults"] = {name: statistics.median(f)
                                    for name, f in merged["page_faults"].items()}
    if "unmodified" in median:
        merged["speedup"] = {name: rate / median["unmodified"] for name, rate in median.items()}
    return merged


def child(args: argparse.Namespace) -> None:
    """One process's measurements under the allocator its environment sets, as a JSON line."""
    mode = retain_freed_memory()
    names = args.variants.split(",")
    runs = [bench_size(int(s), args.images, args.batch_size, names)
            for s in args.sizes.split(",")]
    print(json.dumps({"allocator": mode, "runs": runs}))


def run_child(args: argparse.Namespace, allocator: str) -> dict:
    env = {**os.environ, "HFSNET_MALLOC": allocator}
    command = [sys.executable, __file__, "--child", "--images", str(args.images),
               "--batch-size", str(args.batch_size), "--sizes", args.sizes,
               "--variants", args.variants, "--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        refuse(f"the HFSNET_MALLOC={allocator} measurement failed ({done.returncode}): {last}")
    return json.loads(done.stdout.splitlines()[-1])


def refuse(message: str) -> NoReturn:
    """One line on stderr and exit 2, as hfsnet's commands do."""
    print(f"feature_pass.py: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sizes", default="64,224")
    parser.add_argument("--repeats", type=int, default=3,
                        help="processes per allocator, interleaved")
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--allocators", default="retain",
                        help="comma-separated HFSNET_MALLOC modes: retain, system")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if unknown := set(args.variants.split(",")) - set(VARIANTS):
        refuse(f"--variants: unknown {sorted(unknown)}; expected some of {', '.join(VARIANTS)}")
    if unknown := set(args.allocators.split(",")) - set(CHOICES):
        refuse(f"--allocators: unknown {sorted(unknown)}; expected some of {', '.join(CHOICES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    load_before = os.getloadavg()
    allocators = args.allocators.split(",")
    runs: dict[str, list[dict]] = {a: [] for a in allocators}
    for _ in range(args.repeats):
        for allocator in allocators:
            runs[allocator].append(run_child(args, allocator))
    load_after = os.getloadavg()
    results = [{"allocator": runs[a][0]["allocator"],
                **summarize([r["runs"][i] for r in runs[a]])}
               for a in allocators for i in range(len(args.sizes.split(",")))]
    contended = max(load_before[0], load_after[0]) > os.cpu_count() / 2  # type: ignore[operator]
    report = {"machine": platform.processor() or platform.machine(), "cpu": cpu_description(),
              "cpu_count": os.cpu_count(), "threads": args.threads or torch.get_num_threads(),
              "torch": torch.__version__, "load_average_before": load_before,
              "load_average_after": load_after, "contended": contended,
              "command": " ".join(sys.argv), "results": results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        rates = ", ".join(f"{k} {v:.0f} img/s ({r['median_page_faults'][k]:,.0f} page faults)"
                          for k, v in r["images_per_second"].items())
        compiles = ", ".join(f"{k} {v:.0f} s" for k, v in r["compile_seconds"].items())
        print(f"{r['side']} px, batch {r['batch_size']}, allocator {r['allocator']}: {rates}"
              + (f"; compile {compiles}" if compiles else ""))
    print(f"load average {load_before} -> {load_after}; wrote {args.results}")


if __name__ == "__main__":
    main()
