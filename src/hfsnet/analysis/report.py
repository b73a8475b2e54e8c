"""The comparison report: compare.json, plots, report.md and a self-contained report.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hfsnet.analysis.compare import CompareError
from hfsnet.analysis.document import (
    Block,
    Bullets,
    Heading,
    Image,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from hfsnet.analysis.units import format_bytes, format_count, format_si
from hfsnet.analysis.verdicts import CLAIMS, MEMORY_TOLERANCE, SIGNIFICANCE_SE, judge
from hfsnet.fsutil import atomic_write_bytes

PLOTS_DIR = "plots"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
COMPARE_JSON = "compare.json"


def _pm(s: dict[str, Any], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    mean = f"{scale * s['mean']:.{digits}f}"
    if s["std"] is None:
        return f"{mean}{unit} (one seed)"
    return f"{mean} ± {scale * s['std']:.{digits}f}{unit} (n={s['n']})"


def _values(s: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    return ", ".join(f"{scale * v:.{digits}f}" for v in s["values"])


def _title(setup: dict[str, Any]) -> str:
    return f"Do the seed's claims hold? {' vs '.join(setup['models'])} on {setup['dataset']}"


def _setup_blocks(payload: dict[str, Any]) -> list[Block]:
    s = payload["setup"]
    env = payload["environment"]["start"]
    c, h, w = s["image_shape"]
    blocks: list[Block] = [Heading(_title(s), 1), Paragraph(
        f"Data: {s['dataset']} ({s['data']}), {s['train_size']:,} training, {s['val_size']:,} "
        f"validation and {s['test_size']:,} test images of {c}x{h}x{w}. Recipe "
        f"'{s['recipe']}': {s['optimizer']} at lr {s['lr']:g} ({s['schedule']} schedule), "
        f"batch {s['batch_size']}, {s['precision']}, {s['epochs']} epochs, seeds "
        f"0..{s['seeds'] - 1} ({s['seeds']} per model). Baseline without feature sharing: "
        f"{s['baseline']}.")]
    reductions = []
    if s["epochs"] != s["recipe_epochs"]:
        reductions.append(f"{s['epochs']} epochs instead of the recipe's {s['recipe_epochs']}")
    if s["overrides"].get("limit_train") is not None:
        reductions.append(f"a stratified subset of {s['overrides']['limit_train']:,} training "
                          "images instead of the whole training split")
    if reductions:
        blocks.append(Paragraph("Reduced run: " + " and ".join(reductions) + ". These numbers "
                                "are not those of the full recipe.", emphasis=True))
    if s["overrides"]:
        blocks.append(Paragraph("Changed from the recipe: " + ", ".join(
            f"{k}={json.dumps(v)}" for k, v in sorted(s["overrides"].items())) + "."))
    if s["model_options"]:
        blocks.append(Paragraph("Model options: " + "; ".join(
            f"{m}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in opts.items())
            for m, opts in s["model_options"].items()) + "."))
    start, end = env["load_average"], payload["environment"]["end"]["load_average"]
    load = (f"; 1-minute load average {start[0]:.1f} when the comparison started and "
            f"{end[0]:.1f} when it ended" if start and end else "")
    threads = s.get("threads_per_run", env["torch_threads"])
    runs = (f"{s['jobs']} runs trained at a time with {threads} torch thread(s) each"
            if s.get("jobs", 1) > 1 else f"{threads} torch threads")
    blocks.append(Paragraph(
        f"Measured with torch {env['torch']} on {env['platform']}, {env['cpu_count']} CPUs, "
        f"{runs}, GPU: {env['cuda'] or 'none'}{load}. Times depend on the machine and on "
        "whatever else ran on it."))
    return blocks


def _verdict_blocks(payload: dict[str, Any]) -> list[Block]:
    rows = [[v["claim"], v["model"], v["baseline"], v["status"], v["evidence"]]
            for v in payload["verdicts"]]
    return [
        Heading("Verdicts"),
        Paragraph("For each claim of the seed, whether these measurements support it for "
                  "each feature-sharing model against the baseline."),
        Table(["Claim", "Model", "Against", "Verdict", "Evidence"], rows),
    ]


def _overview_blocks(payload: dict[str, Any]) -> list[Block]:
    rows = []
    for m in payload["models"]:
        t, a = m["totals"], m["aggregate"]
        rows.append([m["name"], format_count(t["params"]), format_si(t["macs"]),
                     _pm(a["test_acc"], 100, unit="%"), _pm(a["gap"], 100, unit=" pts"),
                     _pm(a["train_seconds"], digits=0, unit=" s"),
                     format_bytes(m["peak_memory"]["peak_bytes"])])
    return [Heading("At a glance"), Table(
        ["Model", "Params", "MACs/image", "Test accuracy", "Train-test gap", "Training time",
         "Peak memory (measured)"], rows)]


def _model_rows(m: dict[str, Any]) -> list[list[str]]:
    t, a, peak = m["totals"], m["aggregate"], m["peak_memory"]
    epochs = ", ".join(str(r["best_epoch"]) for r in m["runs"])
    return [
        ["Parameters", f"{format_count(t['params'])} ({format_bytes(t['param_bytes'])})"],
        ["MACs per image", f"{format_count(t['macs'])} ({format_si(t['macs'])})"],
        ["FLOPs per image (2 x MACs)", f"{format_count(t['flops'])} ({format_si(t['flops'])})"],
        ["Test accuracy, final epoch", _pm(a["test_acc"], 100, unit="%")],
        ["Test accuracy per seed (%)", _values(a["test_acc"], 100)],
        ["Best epoch's test accuracy", f"{_pm(a['best_test_acc'], 100, unit='%')} at epochs "
                                       f"{epochs} (chosen on the test set: optimistic)"],
        ["Train accuracy, final epoch", _pm(a["train_acc"], 100, unit="%")],
        ["Generalization gap (train - test accuracy)", _pm(a["gap"], 100, unit=" points")],
        ["Test loss, final", _pm(a["test_loss"], digits=4)],
        ["Test loss rise above its minimum", _pm(a["test_loss_rise"], digits=4)],
        ["Training wall time", _pm(a["train_seconds"], digits=1, unit=" s")],
        ["Training images/s", _pm(a["images_per_second"], digits=1)],
        ["Measured peak memory of a training step",
         f"{format_bytes(peak['peak_bytes'])} at batch {peak['batch_size']} "
         f"({peak['precision']}, {peak['optimizer']}, {peak['device']}); weights + gradients "
         f"+ optimizer state {format_bytes(peak['state_bytes'])}"],
        ["Activations kept for backward (traced)",
         f"{format_bytes(t['activation_bytes'])} at batch {peak['batch_size']}"],
    ]


def _model_blocks(payload: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Results per model")]
    for m in payload["models"]:
        options = ", ".join(f"{k}={json.dumps(v)}" for k, v in m["options"].items())
        blocks.append(Heading(m["name"] + (f" ({options})" if options else ""), 3))
        blocks.append(Table(["Measure", "Value"], _model_rows(m)))
    return blocks


def _method_blocks(payload: dict[str, Any]) -> list[Block]:
    return [Heading("How the numbers were measured"), Bullets([
        "Parameters: every parameter tensor's elements (kernels x kernel size + biases; norm "
        "scales and shifts included; norm running statistics are buffers, not counted).",
        "MACs and FLOPs: torch.utils.flop_counter over one forward pass (convolutions and "
        "matrix products; FLOPs = 2 x MACs), per image.",
        "Test accuracy and loss: the final epoch's model on the full test split; mean ± sample "
        "standard deviation over seeds.",
        "Generalization gap: final train accuracy (running mean over the last epoch, dropout "
        "and augmentation on) minus final test accuracy. Test loss rise: final test loss "
        "minus the lowest test loss of any epoch; both are the overfitting the seed says "
        "sharing reduces.",
        "Training wall time: the summed time of the training steps of all epochs, without "
        "the per-epoch evaluation.",
        "Peak memory: one forward + backward + optimizer step at the recipe's batch size in a "
        "fresh process, after a first step (so optimizer state exists); on CPU the peak "
        "resident set above a baseline taken before the model was built, on CUDA "
        "torch.cuda.max_memory_allocated. It includes weights, gradients, optimizer state, "
        "the batch, activations and allocator slack.",
        f"Verdicts: exact counts compare directly; peak memory (one measurement per model) "
        f"counts differences over {100 * MEMORY_TOLERANCE:.0f}%; seed-averaged numbers count "
        f"a difference only beyond {SIGNIFICANCE_SE:g} standard errors of the difference, "
        "otherwise 'inconclusive'. Overfitting: one conclusive measure decides; 'mixed' when "
        "the two measures disagree.",
    ])]


def build_blocks(payload: dict[str, Any]) -> list[Block]:
    plots = [Image(title, f"{PLOTS_DIR}/{name}") for title, name in payload["plots"].items()]
    return [*_setup_blocks(payload), *_overview_blocks(payload), *_verdict_blocks(payload),
            *_model_blocks(payload),
            Heading("Plots"), *plots, *_method_blocks(payload)]


def _make_plots(payload: dict[str, Any], out_dir: Path) -> dict[str, str]:
    # Imported here: matplotlib is an optional extra (`plots`), and the CLI must start without it.
    try:
        from hfsnet.analysis.plots import make_plots
    except ModuleNotFoundError as err:
        if err.name != "matplotlib":
            raise
        raise CompareError("hfsnet compare draws its plots with matplotlib: "
                           "pip install 'hfsnet[plots]'") from err
    return make_plots(payload, out_dir)


def write_report(payload: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Add verdicts and plots to ``payload``; write compare.json, report.md and report.html."""
    payload = {**payload, "claims": list(CLAIMS),
               "verdicts": [v.to_dict() for v in judge(payload)],
               "plots": _make_plots(payload, out_dir / PLOTS_DIR)}
    blocks = build_blocks(payload)
    atomic_write_bytes(out_dir / COMPARE_JSON, json.dumps(payload, indent=2).encode())
    atomic_write_bytes(out_dir / REPORT_MD, to_markdown(blocks).encode())
    atomic_write_bytes(out_dir / REPORT_HTML,
                       to_html(blocks, _title(payload["setup"]), out_dir).encode())
    return payload
