"""The training loop a user would write by hand: the comparison point for hfsnet's trainer.

The seed's CNN as one ``nn.Sequential``, a ``DataLoader`` over in-memory tensors, Adam at the
seed recipe's learning rate, no augmentation and no tricks; fp32 and NCHW unless asked for bf16
autocast or channels_last, the two settings the trainer has, so that every comparison can be
made at equal precision and layout. Timed the same way as the trainer: only the training
steps, not the data preparation.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def seed_cnn_sequential(num_classes: int = 10) -> nn.Sequential:
    """The seed's Keras CNN for 3x32x32 inputs (890,410 parameters), written out flat."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(64 * 5 * 5, 512), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    )


def train_plain(x: torch.Tensor, y: torch.Tensor, *, batch_size: int, steps: int,
                lr: float = 2e-4, seed: int = 0, precision: str = "fp32",
                channels_last: bool = False) -> dict[str, object]:
    """Train for ``steps`` batches of the normalised float images ``x``; returns the loss and the
    ``time.perf_counter`` time at the end of every step. ``precision`` "bf16" autocasts the
    forward pass; ``channels_last`` puts the model and every batch in NHWC memory."""
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = seed_cnn_sequential(int(y.max()) + 1).to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, drop_last=True)
    losses: list[float] = []
    stamps: list[float] = []  # perf_counter seconds at the end of each step
    while len(losses) < steps:
        for xb, yb in loader:
            xb = xb.contiguous(memory_format=fmt)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            stamps.append(time.perf_counter())
            if len(losses) == steps:
                break
    return {"losses": losses, "stamps": stamps}
