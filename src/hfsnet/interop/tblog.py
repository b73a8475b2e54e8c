"""TensorBoard logging of a training run through the Trainer's hooks.

Per step: training loss and learning rate (``Trainer.step_hooks``). Per epoch: every number of
the epoch's ``metrics.jsonl`` row (loss and accuracy per split, lr, images/s, seconds), written
when the next epoch starts (``Trainer.epoch_hooks``) and, for the last epoch, at ``finish``.
At ``finish``: the test confusion matrix as an image and as a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hfsnet.errors import HfsnetError
from hfsnet.train.loop import Trainer

LOG_KINDS = ("none", "tensorboard")
LOG_DIR = "tensorboard"  # inside the run directory
CELL_PX = 16  # side of one confusion-matrix cell in the image

# metrics.jsonl key -> TensorBoard tag; related curves share a section.
EPOCH_TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test",
    "train_acc": "accuracy/train", "val_acc": "accuracy/val", "test_acc": "accuracy/test",
    "lr": "lr/epoch_end", "images_per_second": "speed/images_per_second",
    "seconds": "speed/epoch_seconds", "eval_seconds": "speed/eval_seconds",
}


class LogError(HfsnetError):
    """A --log choice that cannot be served."""


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or a clear error when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise LogError("--log tensorboard: the tensorboard package is not installed; install "
                       "it with `pip install 'hfsnet[tensorboard]'`, or pass --log none") from None
    return SummaryWriter


def confusion_image(confusion: list[list[int]]) -> torch.Tensor:
    """Row-normalised confusion matrix as a 3 x H x W uint8 image: each true class's row shows
    where its images went, white = all of them, black = none; CELL_PX pixels per cell."""
    counts = torch.tensor(confusion, dtype=torch.float32)
    share = counts / counts.sum(1, keepdim=True).clamp(min=1)
    pixels = (255 * share).round().to(torch.uint8)
    big = pixels.repeat_interleave(CELL_PX, 0).repeat_interleave(CELL_PX, 1)
    return big.expand(3, -1, -1).contiguous()


def confusion_table(confusion: list[list[int]], classes: list[str]) -> str:
    """Markdown table: one row per true class, one column per predicted class."""
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |",
             "|---" * (len(classes) + 1) + "|"]
    for name, row in zip(classes, confusion, strict=True):
        lines.append(f"| {name} | " + " | ".join(str(n) for n in row) + " |")
    return "\n".join(lines)


class TensorBoardLogger:
    """Attach to a Trainer before ``fit``; :meth:`finish` after it succeeds, :meth:`close` in
    any case. Under DDP every rank creates one; only rank 0 writes, like the trainer."""

    def __init__(self, trainer: Trainer, log_dir: Path) -> None:
        self.trainer = trainer
        self.logged_epochs = 0
        self.writer: Any = None
        if trainer.dist.is_main:
            self.writer = summary_writer_class()(log_dir=str(log_dir))
            trainer.step_hooks.append(self.on_step)
            trainer.epoch_hooks.append(self.on_epoch_start)

    def on_step(self, step: int, loss: float) -> None:
        self.writer.add_scalar("loss/train_step", loss, step)
        self.writer.add_scalar("lr/step", self.trainer.optimizer.param_groups[0]["lr"], step)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.log_epochs()

    def log_epochs(self) -> None:
        """Write the epoch rows the trainer finished since the last call."""
        for row in self.trainer.history[self.logged_epochs:]:
            for key, tag in EPOCH_TAGS.items():
                if key in row:
                    self.writer.add_scalar(tag, row[key], row["epoch"])
        self.logged_epochs = len(self.trainer.history)

    def finish(self) -> None:
        """After a completed ``fit``: the last epoch and the test confusion matrix."""
        result = self.trainer.evaluate("test")  # on every rank: DDP shards the evaluation
        if self.writer is None:
            return
        self.log_epochs()
        step = self.trainer.epoch
        self.writer.add_image("test/confusion", confusion_image(result.confusion), step)
        self.writer.add_text("test/confusion",
                             confusion_table(result.confusion, self.trainer.data.classes), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
