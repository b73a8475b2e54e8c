"""Evaluation over an in-memory split, and top-k prediction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hfsnet.data import BatchLoader, ImageSet
from hfsnet.train.distributed import DistContext
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


def summarize(logits: torch.Tensor, labels: torch.Tensor, num_classes: int,
              dist: DistContext | None = None) -> EvalResult:
    """Loss, accuracy, per-class accuracy and confusion matrix from logits and labels; with
    ``dist``, of the union of every rank's shard."""
    loss_sum = F.cross_entropy(logits, labels, reduction="sum").double().reshape(1)
    confusion = torch.bincount(labels * num_classes + logits.argmax(1),
                               minlength=num_classes**2).view(num_classes, num_classes)
    if dist is not None:
        loss_sum, confusion = dist.sum(loss_sum), dist.sum(confusion)
    count = int(confusion.sum())
    if count == 0:
        return EvalResult(float("nan"), float("nan"), [], confusion.tolist(), 0)
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
    acc = int(confusion.diag().sum()) / count
    return EvalResult(float(loss_sum) / count, acc, per_class, confusion.tolist(), count)


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
    dist: DistContext | None = None,
) -> EvalResult:
    """Evaluate on ``data``; with ``dist`` each rank takes every world_size-th image and the
    counts are summed, so the result covers ``data`` exactly once."""
    device = device or next(model.parameters()).device
    if dist is not None and dist.enabled:
        data = data.subset(torch.arange(dist.rank, len(data), dist.world_size))
    loader = BatchLoader(data, batch_size, mean=mean, std=std, device=device,
                         channels_last=channels_last)
    logits, labels = predict_logits(model, loader, device=device, precision=precision)
    return summarize(logits, labels, len(data.classes), dist)
