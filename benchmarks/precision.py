"""bf16 against fp32 on this CPU: matmuls, training steps, and what ``--precision auto`` picks.

    .venv/bin/python benchmarks/precision.py [--batch 500] [--repeats 2] [--models M1,M2]

bf16 autocast is not faster everywhere: on the AMD EPYC (Zen 4) this project first ran on, a
bf16 matmul ran ~2.3x an fp32 one; on an Intel Xeon without AMX the same kind of machine later
turned out to be, bf16 ran at half the fp32 rate. This prints and saves, side by side in one
process: the 2048^3 matmul rate in both at 1 and 2 threads; training-step images/s (forward,
backward; channels-last, random weights and images, the models' own layers) in both, the
settings interleaved ``--repeats`` times; the ratio the ``auto`` probe
(:func:`hfsnet.train.runtime.bf16_step_ratio`) measures and the precision it picks. The CPU model
and the load average go with the numbers: run it alone.

Results: ``benchmarks/results/precision.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hfsnet.models import create_model
from hfsnet.train.runtime import autocast, bf16_step_ratio, resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_accuracy import cpu_model

RESULTS = Path(__file__).resolve().parent / "results" / "precision.json"
CPU = torch.device("cpu")


def matmul_gflops(dtype: torch.dtype, threads: int, size: int = 2048, reps: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e9


def step_images_per_second(name: str, precision: str, batch: int) -> float:
    """Two timed forward + backward steps after a warm-up, channels-last."""
    model = create_model(name, image_size=32).to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
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
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="air-plain,hfs-air-s")
    parser.add_argument("--threads", type=int, default=2, help="threads of the training steps")
    args = parser.parse_args()
    load_before = os.getloadavg()
    matmul = {f"{kind}_{threads}_threads": matmul_gflops(dtype, threads)
              for threads in (1, 2) for kind, dtype in (("bf16", torch.bfloat16),
                                                        ("fp32", torch.float32))}
    print("matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in matmul.items()), flush=True)
    torch.set_num_threads(args.threads)
    runs: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeats):
        for name in args.models.split(","):
            for precision in ("bf16", "fp32"):
                rate = step_images_per_second(name, precision, args.batch)
                runs.setdefault(name, {}).setdefault(precision, []).append(rate)
                print(f"{name} {precision}: {rate:.0f} img/s", flush=True)
    steps = {name: {"bf16_median": statistics.median(r["bf16"]),
                    "fp32_median": statistics.median(r["fp32"]), "runs": r,
                    "bf16_over_fp32": statistics.median(r["bf16"]) / statistics.median(r["fp32"])}
             for name, r in runs.items()}
    ratio = bf16_step_ratio(torch.get_num_threads())
    picked = resolve_precision("auto", CPU)
    for name, s in steps.items():
        print(f"{name}: bf16 {s['bf16_median']:.0f} img/s, fp32 {s['fp32_median']:.0f} img/s, "
              f"bf16 = {s['bf16_over_fp32']:.2f}x fp32")
    print(f"--precision auto probe: bf16 step time = {ratio:.2f}x fp32's -> {picked}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "cpu": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "batch": args.batch, "threads": args.threads, "load_before": load_before,
        "load_after": os.getloadavg(), "matmul_gflops": matmul, "steps": steps,
        "auto_probe_ratio": ratio, "auto_picks": picked}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
