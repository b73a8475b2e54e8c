"""Evaluation over an in-memory split, and top-k prediction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hfsnet.data import BatchLoader, ImageSet
from hfsnet.train.runtime import autocast


@dataclass
class EvalResult:
    loss: float
    acc: float
    per_class_acc: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    count: int


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    loader: BatchLoader,
    *,
    device: torch.device,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 logits N x K, labels N) over one pass of ``loader``, in eval mode."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for x, y in loader.epoch(0):
            with autocast(device, precision):
                out = model(x.to(device, non_blocking=True))
            logits.append(out.float().cpu())
            labels.append(y)
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def summarize(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> EvalResult:
    """Loss, accuracy, per-class accuracy and confusion matrix from logits and labels."""
    loss = F.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes**2)
    confusion = confusion.view(num_classes, num_classes)
    support = confusion.sum(1).clamp(min=1)
    per_class = (confusion.diag() / support).tolist()
    acc = int((pred == labels).sum()) / len(labels) if len(labels) else float("nan")
    return EvalResult(loss, acc, per_class, confusion.tolist(), len(labels))


def evaluate(
    model: nn.Module,
    data: ImageSet,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 500,
    device: torch.device | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
) -> EvalResult:
    device = device or next(model.parameters()).device
    loader = BatchLoader(data, batch_size, mean=mean, std=std, device=device,
                         channels_last=channels_last)
    logits, labels = predict_logits(model, loader, device=device, precision=precision)
    return summarize(logits, labels, len(data.classes))
