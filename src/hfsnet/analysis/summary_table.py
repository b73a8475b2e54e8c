"""The text table `hfsnet summary` prints: one row per module, nested modules indented."""

from __future__ import annotations

from hfsnet.analysis.summary import LayerRow, ModelSummary
from hfsnet.analysis.units import format_bytes, format_count, format_si
from hfsnet.textutil import format_columns

_HEADERS = ("Layer", "Type", "Output shape", "Params", "MACs/img", "FLOPs/img",
            "Activations kept")
_RIGHT_ALIGNED = {3, 4, 5, 6}


def _cells(row: LayerRow) -> tuple[str, ...]:
    return ("  " * (row.depth - 1) + row.name, row.type, row.output_shape,
            format_count(row.params), format_count(row.macs), format_count(row.flops),
            format_bytes(row.activation_bytes))


def _totals_lines(summary: ModelSummary) -> list[str]:
    t = summary.totals
    b = summary.batch_size
    lines = [
        f"parameters        {format_count(t.params)} (trainable {format_count(t.trainable_params)}"
        f", frozen {format_count(t.frozen_params)}); buffers {format_count(t.buffer_elements)} "
        "elements (norm running statistics)",
        f"parameter bytes   {format_bytes(t.param_bytes)} (+ buffers "
        f"{format_bytes(t.buffer_bytes)})",
        f"MACs per image    {format_count(t.macs)} ({format_si(t.macs)})",
        f"FLOPs per image   {format_count(t.flops)} ({format_si(t.flops)}; FLOPs = 2 x MACs, "
        "convolutions and matrix products as counted by torch.utils.flop_counter)",
        f"activation bytes  {format_bytes(t.activation_bytes)} (tensors kept for backward, "
        f"batch {b}, {summary.precision})",
    ]
    if t.weight_copy_bytes:
        lines.append(f"weight copies     {format_bytes(t.weight_copy_bytes)} (autocast's "
                     f"{summary.precision} copies of the weights, kept for backward)")
    peak = summary.peak_memory
    if peak is not None:
        lines.append(
            f"measured peak     {format_bytes(peak['peak_bytes'])} for one training step at batch "
            f"{b} (forward + backward + {peak['optimizer']} step, {summary.precision}, "
            f"{peak['device']}); of which weights + gradients + optimizer state "
            f"{format_bytes(peak['state_bytes'])}. Method: {peak['method']}")
    return lines


def render_summary(summary: ModelSummary, *, max_depth: int | None = None) -> str:
    """The per-layer table (rows down to ``max_depth``, all when None) and the totals."""
    c, h, w = summary.input_shape
    title = (f"{summary.model} at input {c}x{h}x{w}, batch {summary.batch_size}, "
             f"{summary.precision}; every row counts the module and everything nested in "
             "it; a tensor kept for backward by several layers is charged once, to the first")
    rows = [r for r in summary.rows if max_depth is None or r.depth <= max_depth]
    table = format_columns([_HEADERS, *(_cells(r) for r in rows)], _RIGHT_ALIGNED)
    rule = "-" * max(len(line) for line in table)
    return "\n".join([title, rule, table[0], rule, *table[1:], rule,
                      *_totals_lines(summary)])
