"""bf16 against fp32 on this CPU: matmuls, training steps, and what ``--precision auto`` picks.

    .venv/bin/python benchmarks/precision.py [--batch 128] [--repeats 2] [--models M1,M2@64]
        [--results benchmarks/results/precision-<machine>.json]

bf16 autocast is not faster everywhere. The machine kind has been an AMD EPYC (Zen 4) with
AVX-512 BF16, where a bf16 matmul ran ~2.3x an fp32 one; an Intel Xeon without AMX, where bf16
ran at half the fp32 rate; and an AMD EPYC with AVX2 only, where bf16 is emulated. This prints
and saves, side by side in one process: the matmul rate (2048^3 unless ``--matmul-size``) in
both at 1 and 2 threads (as many repetitions as fit in about 2 s, at least one); training-step
images/s (forward, backward; channels-last, random weights and images, the models' own
layers; ``name@side`` for a model's input side, 32 px by default) in both, the settings
interleaved ``--repeats`` times; and per model the ratios the ``auto`` probe
(:func:`hfsnet.train.runtime.bf16_step_ratio`) measures at each of its batch sizes,
``--probe-repeats`` times, and the whole probe's ratio, precision picked and seconds as often.
``--contend N`` runs N busy-loop processes throughout, a stand-in for other jobs on the machine
(the probe must still pick bf16 where bf16 is faster). The CPU model and the load average go
with the numbers: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hfsnet.models import create_model
from hfsnet.train.runtime import (
    PROBE_BATCHES,
    autocast,
    bf16_step_ratio,
    cpu_description,
    native_cpu_bf16,
    precision_for,
    probed_bf16_ratio,
)

RESULTS = Path(__file__).resolve().parent / "results" / "precision.json"
CPU = torch.device("cpu")
MATMUL_BUDGET = 2.0  # seconds of timed matmuls per setting


def matmul_gflops(dtype: torch.dtype, threads: int, size: int = 2048) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    reps, start = 0, time.perf_counter()
    while reps == 0 or time.perf_counter() - start < MATMUL_BUDGET:
        a @ b
        reps += 1
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e9


def parse_model(spec: str) -> tuple[str, int]:
    name, _, side = spec.partition("@")
    return name, int(side or 32)


def build(spec: str) -> torch.nn.Module:
    name, side = parse_model(spec)
    return create_model(name, image_size=side).to(memory_format=torch.channels_last).train()


def step_images_per_second(spec: str, precision: str, batch: int) -> float:
    """Two timed forward + backward steps after a warm-up, channels-last."""
    side = parse_model(spec)[1]
    model = build(spec)
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with autocast(CPU, precision):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()

    step()
    start = time.perf_counter()
    step()
    step()
    return 2 * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="air-plain,hfs-air-s,efficientnet-lite0@64")
    parser.add_argument("--threads", type=int, default=2, help="threads of the training steps")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="side of the square matmuls (an emulated bf16 2048^3 matmul took "
                        "over a minute on the AVX2-only EPYC: 512 there; 0: none)")
    parser.add_argument("--probe-repeats", type=int, default=3,
                        help="probes of auto's timing per model and probe batch, to show how "
                        "much one probe varies (--repeats 0 --matmul-size 0: the probes only)")
    parser.add_argument("--contend", type=int, default=0,
                        help="busy-loop processes running throughout (default 0)")
    args = parser.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.contend)]
    try:
        run(args)
    finally:
        for hog in hogs:
            hog.kill()


def auto_probe(model: torch.nn.Module, shape: tuple[int, int, int],
               native: bool) -> dict[str, object]:
    start = time.perf_counter()
    ratio = probed_bf16_ratio(model, shape, channels_last=True, native=native)
    return {"ratio": ratio, "picks": precision_for(ratio, native=native),
            "seconds": time.perf_counter() - start}


def run(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
    native = native_cpu_bf16()
    matmul = {}
    for threads in (1, 2) if args.matmul_size else ():
        for kind, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            matmul[f"{kind}_{threads}_threads"] = matmul_gflops(dtype, threads,
                                                                args.matmul_size)
            print(f"matmul {kind} {threads} thread(s): {matmul[f'{kind}_{threads}_threads']:.1f}"
                  " GFLOP/s", flush=True)
    torch.set_num_threads(args.threads)
    runs: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeats):
        for spec in args.models.split(","):
            for precision in ("bf16", "fp32"):
                rate = step_images_per_second(spec, precision, args.batch)
                runs.setdefault(spec, {}).setdefault(precision, []).append(rate)
                print(f"{spec} {precision}: {rate:.1f} img/s", flush=True)
    steps = {}
    for spec in args.models.split(","):
        side = parse_model(spec)[1]
        model, shape = build(spec), (3, side, side)
        by_batch = {batch: [bf16_step_ratio(model, shape, channels_last=True, batch=batch)
                            for _ in range(args.probe_repeats)] for batch in PROBE_BATCHES}
        autos = [auto_probe(model, shape, native) for _ in range(args.probe_repeats)]
        steps[spec] = {"probe_by_batch": by_batch, "auto_probes": autos,
                       "auto_fp32_picks": sum(a["picks"] == "fp32" for a in autos)}
        r = runs.get(spec)
        if r:
            steps[spec].update({
                "bf16_median": statistics.median(r["bf16"]),
                "fp32_median": statistics.median(r["fp32"]), "runs": r,
                "bf16_over_fp32": statistics.median(r["bf16"]) / statistics.median(r["fp32"])})
    for spec, s in steps.items():
        if "runs" in s:
            print(f"{spec}: bf16 {s['bf16_median']:.1f} img/s, fp32 {s['fp32_median']:.1f} "
                  f"img/s, bf16 = {s['bf16_over_fp32']:.2f}x fp32")
        probes = "; ".join(f"batch {b}: " + ", ".join(f"{v:.2f}" for v in values)
                           for b, values in s["probe_by_batch"].items())
        autos = ", ".join(f"{a['ratio']:.2f} -> {a['picks']} ({a['seconds']:.1f} s)"
                          for a in s["auto_probes"])
        print(f"{spec}: probe ratios (bf16 step time / fp32's) {probes}; auto's probes "
              f"{autos}: fp32 {s['auto_fp32_picks']} of {len(s['auto_probes'])}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "command": "benchmarks/precision.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_description(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "batch": args.batch, "threads": args.threads, "matmul_size": args.matmul_size,
        "contend": args.contend,
        "load_before": load_before,
        "load_after": os.getloadavg(), "matmul_gflops": matmul, "steps": steps}, indent=2)
        + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
