"""The comparison's figures as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display is needed or wanted
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from hfsnet.fsutil import atomic_write

DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda file: fig.savefig(file, dpi=DPI, format=path.suffix.lstrip(".")))
    plt.close(fig)
    return path


def _band(ax: Any, x: list[float], mean: list[float], std: list[float], label: str,
          **style: Any) -> None:
    """A mean curve with a shaded +/- one standard deviation band (over seeds)."""
    pct = [100 * v for v in mean]
    line = ax.plot(x, pct, label=label, **style)[0]
    low = [100 * (m - s) for m, s in zip(mean, std, strict=True)]
    high = [100 * (m + s) for m, s in zip(mean, std, strict=True)]
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)


def accuracy_per_epoch(models: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m in models:
        c = m["curves"]
        _band(ax, c["epoch"], c["test_acc"], c["test_acc_std"], m["name"], marker="o", ms=3)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)",
           title="Test accuracy per epoch (mean over seeds, band: ±1 std)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def train_vs_test(models: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy (top row) and loss (bottom row) on train and test, one column per model."""
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 6.4), squeeze=False)
    for col, m in enumerate(models):
        c = m["curves"]
        acc, loss = axes[0][col], axes[1][col]
        _band(acc, c["epoch"], c["train_acc"], c["train_acc_std"], "train", color="C0")
        _band(acc, c["epoch"], c["test_acc"], c["test_acc_std"], "test", color="C1")
        acc.set(title=m["name"], ylabel="accuracy (%)")
        for key, color in (("train_loss", "C0"), ("test_loss", "C1")):
            loss.plot(c["epoch"], c[key], color=color, label=key.split("_")[0])
        loss.set(xlabel="epoch", ylabel="loss")
        for ax in (acc, loss):
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle("Train vs test (train accuracy is the running mean over each epoch, "
                 "with dropout and augmentation on)", fontsize=9)
    return _save(fig, path)


def _scatter(models: list[dict[str, Any]], path: Path, x_of: Any, xlabel: str, title: str,
             *, log_x: bool) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m in models:
        acc = m["aggregate"]["test_acc"]
        x, x_err = x_of(m)
        ax.errorbar(x, 100 * acc["mean"], yerr=100 * (acc["std"] or 0), xerr=x_err, fmt="o",
                    capsize=4, label=m["name"])
        ax.annotate(m["name"], (x, 100 * acc["mean"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="final test accuracy (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def accuracy_vs_params(models: list[dict[str, Any]], path: Path) -> Path:
    return _scatter(models, path, lambda m: (m["totals"]["params"], None), "parameters",
                    "Accuracy vs parameters (error bars: ±1 std over seeds)", log_x=True)


def accuracy_vs_time(models: list[dict[str, Any]], path: Path) -> Path:
    def seconds(m: dict[str, Any]) -> tuple[float, float | None]:
        t = m["aggregate"]["train_seconds"]
        return t["mean"], t["std"]
    return _scatter(models, path, seconds, "training wall time (s)",
                    "Accuracy vs training time (error bars: ±1 std over seeds)", log_x=False)


def confusion_matrix(model: dict[str, Any], classes: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class), summed over seeds, with counts."""
    counts = model["confusion"]
    n = len(classes)
    rates = [[v / max(1, sum(row)) for v in row] for row in counts]
    size = max(4.5, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i][j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i][j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"{model['name']}: test confusion (counts, all seeds)")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    return _save(fig, path)


def make_plots(payload: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Every figure of the report, written into ``out_dir``; returns title -> file name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    models = payload["models"]
    files = {
        "Test accuracy per epoch": accuracy_per_epoch(models, out_dir / "test_acc.png"),
        "Train vs test": train_vs_test(models, out_dir / "train_vs_test.png"),
        "Accuracy vs parameters": accuracy_vs_params(models, out_dir / "acc_vs_params.png"),
        "Accuracy vs training time": accuracy_vs_time(models, out_dir / "acc_vs_time.png"),
    }
    classes = payload["setup"]["classes"]
    for m in models:
        files[f"Confusion matrix: {m['name']}"] = confusion_matrix(
            m, classes, out_dir / f"confusion_{m['name']}.png")
    return {title: path.name for title, path in files.items()}
