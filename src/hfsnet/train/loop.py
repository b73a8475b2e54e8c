"""The training loop: one epoch at a time, a checkpoint after each, metrics as JSON lines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hfsnet.data import AugmentConfig, BatchLoader, DataSplits, load_dataset
from hfsnet.models import FeatureClassifier, create_model
from hfsnet.train.checkpoint import CHECKPOINT_NAME, save_checkpoint
from hfsnet.train.config import TrainConfig
from hfsnet.train.evaluate import EvalResult, evaluate
from hfsnet.train.optim import ParamGroup, build_optimizer, set_lr_factor
from hfsnet.train.progress import Progress
from hfsnet.train.runtime import autocast, resolve_device, seed_everything
from hfsnet.train.schedule import lr_factor


@dataclass
class TrainResult:
    out_dir: str
    test_acc: float
    test_loss: float
    params: int
    train_seconds: float
    images_per_second: float
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def data_meta(data: DataSplits) -> dict[str, Any]:
    """What predict/evaluate need to feed new images the way the model was trained."""
    return {"classes": data.classes, "mean": list(data.mean), "std": list(data.std),
            "in_channels": data.in_channels, "image_size": list(data.image_size),
            "data_digest": data.digest, "data_name": data.name}


def build_model(config: TrainConfig, data: DataSplits) -> FeatureClassifier:
    options = {"image_size": data.image_size[0], **config.model_options}
    return create_model(config.model, num_classes=data.num_classes,
                        in_channels=data.in_channels, **options)


def load_data(config: TrainConfig) -> DataSplits:
    return load_dataset(config.data, val_split=config.val_split, limit_train=config.limit_train,
                        seed=config.seed, image_size=config.image_size)


StepHook = Callable[[int, float], None]
EpochHook = Callable[["Trainer", int], None]


class Trainer:
    """Owns the model, optimizer and loaders of one run; ``fit`` runs the remaining epochs."""

    def __init__(self, config: TrainConfig, out_dir: Path, data: DataSplits,
                 model: FeatureClassifier, *, groups: list[ParamGroup] | None = None,
                 progress: bool = True) -> None:
        self.config = config
        self.out_dir = out_dir
        self.data = data
        self.device = resolve_device(config.device)
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=fmt)
        groups = groups or [ParamGroup("all", list(model.parameters()), config.lr)]
        self.optimizer = build_optimizer(groups, config.optimizer,
                                         weight_decay=config.weight_decay,
                                         momentum=config.momentum)
        augment = AugmentConfig(crop_padding=config.crop_padding, flip=config.flip,
                                cutout=config.cutout)
        self.loader = BatchLoader(data.train, config.batch_size, mean=data.mean, std=data.std,
                                  shuffle=True, augment=augment, seed=config.seed,
                                  drop_last=len(data.train) > config.batch_size,
                                  device=self.device, channels_last=config.channels_last)
        self.total_steps = config.epochs * len(self.loader)
        self.epoch = 0  # completed epochs
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        self.step_hooks: list[StepHook] = []  # (global step, loss) after each step
        # (trainer, epoch) after model.train() at the start of each epoch: freezing schedules
        # put modules back into eval mode or flip requires_grad here.
        self.epoch_hooks: list[EpochHook] = []

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[float, int]:
        set_lr_factor(self.optimizer, lr_factor(self.config.schedule, step, self.total_steps,
                                                self.config.warmup_fraction))
        with autocast(self.device, self.config.precision):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        correct = int((logits.argmax(1) == y).sum())
        return float(loss), correct

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        for hook in self.epoch_hooks:
            hook(self, epoch)
        n_batches = len(self.loader)
        bar = Progress(n_batches, f"epoch {epoch + 1}/{self.config.epochs}",
                       enabled=self.progress)
        loss_sum, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        for i, (x, y) in enumerate(self.loader.epoch(epoch)):
            step = epoch * n_batches + i
            loss, hits = self._train_step(x, y, step)
            for hook in self.step_hooks:
                hook(step, loss)
            loss_sum += loss * len(y)
            correct += hits
            seen += len(y)
            bar.update(i + 1, seen, loss_sum / seen, correct / seen)
        bar.close()
        seconds = time.perf_counter() - start
        return {"train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                "seconds": seconds, "images_per_second": seen / max(1e-9, seconds),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def evaluate(self, split: str) -> EvalResult:
        c = self.config
        return evaluate(self.model, getattr(self.data, split), mean=self.data.mean,
                        std=self.data.std, batch_size=c.eval_batch_size, device=self.device,
                        precision=c.precision, channels_last=c.channels_last)

    def _end_of_epoch(self, epoch: int, stats: dict[str, float]) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": epoch + 1, **stats}
        start = time.perf_counter()
        if self.data.val is not None:
            val = self.evaluate("val")
            row.update(val_loss=val.loss, val_acc=val.acc)
        if self.config.track_test or epoch + 1 == self.config.epochs:
            test = self.evaluate("test")
            row.update(test_loss=test.loss, test_acc=test.acc)
        row["eval_seconds"] = time.perf_counter() - start
        return row

    def save(self) -> None:
        meta = {**data_meta(self.data), "config": self.config.to_dict(), "epoch": self.epoch,
                "history": self.history}
        save_checkpoint(self.out_dir / CHECKPOINT_NAME, self.model, meta,
                        optimizer=self.optimizer)

    def fit(self) -> TrainResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        metrics = self.out_dir / "metrics.jsonl"
        for epoch in range(self.epoch, self.config.epochs):
            row = self._end_of_epoch(epoch, self._train_epoch(epoch))
            self.epoch = epoch + 1
            self.history.append(row)
            with metrics.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self.save()
            self._report(row)
        return self.result()

    def _report(self, row: dict[str, Any]) -> None:
        if not self.progress:
            return
        parts = [f"epoch {row['epoch']}/{self.config.epochs}",
                 f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"]
        for split in ("val", "test"):
            if f"{split}_acc" in row:
                parts.append(f"{split} loss {row[f'{split}_loss']:.4f} "
                             f"acc {100 * row[f'{split}_acc']:.2f}%")
        parts.append(f"{row['seconds']:.1f}s {row['images_per_second']:,.0f} img/s")
        print(" | ".join(parts), flush=True)

    def result(self) -> TrainResult:
        last = self.history[-1]
        train_seconds = sum(r["seconds"] for r in self.history)
        images = sum(r["seconds"] * r["images_per_second"] for r in self.history)
        result = TrainResult(
            out_dir=str(self.out_dir), test_acc=last["test_acc"], test_loss=last["test_loss"],
            params=count_params(self.model), train_seconds=train_seconds,
            images_per_second=images / max(1e-9, train_seconds), epochs=self.epoch,
            history=self.history,
        )
        (self.out_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
        return result


def train(config: TrainConfig, out_dir: str | Path, *, data: DataSplits | None = None,
          progress: bool = True) -> TrainResult:
    """Train ``config.model`` on ``config.data`` (or ``data``); save the run to ``out_dir``."""
    config.validate()
    seed_everything(config.seed)
    data = data if data is not None else load_data(config)
    model = build_model(config, data)
    return Trainer(config, Path(out_dir), data, model, progress=progress).fit()
