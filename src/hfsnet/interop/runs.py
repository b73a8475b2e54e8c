"""Listing the training runs under a folder: one row per run directory.

A run directory is any folder holding ``config.json``. A finished run has ``result.json``; an
unfinished one (still training, or stopped) is described from its ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hfsnet.errors import HfsnetError
from hfsnet.textutil import format_columns

COLUMNS = ("run", "model", "recipe", "epochs", "test_acc", "time", "params", "status")


class RunsError(HfsnetError):
    """A runs listing that cannot be made; the message names the argument."""


@dataclass
class RunRow:
    run: str  # path relative to the listed folder
    model: str
    recipe: str
    epochs: int  # completed
    planned: int | None  # the config's epochs
    test_acc: float | None
    time: float | None  # training seconds
    params: int | None
    status: str  # "done", or "partial" for a run without result.json

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _metrics_rows(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``metrics.jsonl``; a line being written right now is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_run(run_dir: Path, root: Path) -> RunRow:
    """The row of one run directory; raises OSError/ValueError if its JSON is unreadable."""
    config = _read_json(run_dir / "config.json")
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError("config.json is not an hfsnet run config (no 'model' key)")
    base = {"run": str(run_dir.relative_to(root)) or ".", "model": config["model"],
            "recipe": config.get("recipe", "?"), "planned": config.get("epochs")}
    result_path = run_dir / "result.json"
    if result_path.is_file():
        result = _read_json(result_path)
        return RunRow(**base, epochs=result["epochs"],
                      test_acc=result["test_acc"], time=result["train_seconds"],
                      params=result["params"], status="done")
    rows = _metrics_rows(run_dir / "metrics.jsonl")
    accs = [row["test_acc"] for row in rows if "test_acc" in row]
    return RunRow(**base, epochs=len(rows), test_acc=accs[-1] if accs else None,
                  time=sum(row.get("seconds", 0.0) for row in rows) if rows else None,
                  params=None, status="partial")


def find_runs(root: str | Path) -> tuple[list[RunRow], list[str]]:
    """(rows, "path: reason" for each run directory that could not be read) under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise RunsError(f"runs: {root} is not a directory (expected a folder of run "
                        "directories)")
    rows, skipped = [], []
    for config in sorted(root.rglob("config.json")):
        try:
            rows.append(read_run(config.parent, root))
        except (OSError, ValueError, KeyError, TypeError) as err:
            skipped.append(f"{config.parent}: {type(err).__name__}: {err}")
    return rows, skipped


def sort_runs(rows: list[RunRow], column: str, *, reverse: bool = False) -> list[RunRow]:
    """Rows ordered by ``column``; rows without a value in it come last either way."""
    if column not in COLUMNS:
        raise RunsError(f"--sort must be one of {', '.join(COLUMNS)}, got {column!r}")
    present = [row for row in rows if getattr(row, column) is not None]
    absent = [row for row in rows if getattr(row, column) is None]
    return sorted(present, key=lambda row: getattr(row, column), reverse=reverse) + absent


def format_seconds(seconds: float) -> str:
    """``42.0s``, ``3m05s``, ``2h07m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _cells(row: RunRow) -> list[str]:
    planned = "?" if row.planned is None else str(row.planned)
    return [row.run, row.model, row.recipe, f"{row.epochs}/{planned}",
            "-" if row.test_acc is None else f"{100 * row.test_acc:.2f}%",
            "-" if row.time is None else format_seconds(row.time),
            "-" if row.params is None else f"{row.params:,}", row.status]


def format_table(rows: list[RunRow]) -> str:
    """Aligned text table with a header; numbers right-aligned."""
    right = [COLUMNS.index(name) for name in ("epochs", "test_acc", "time", "params")]
    return "\n".join(format_columns([list(COLUMNS), *(_cells(row) for row in rows)], right))
