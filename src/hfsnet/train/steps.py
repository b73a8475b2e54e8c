"""The steps a trainer ran since its last host sync, kept on the device until their numbers are
needed.

Reading a loss (``float(loss)``, ``.item()``) waits for the device to finish every queued
kernel; on a GPU that stalls the queue once per step. A step instead leaves its loss, its
correct count and its finiteness flag as 0-dim tensors here, and :meth:`PendingSteps.collect`
reads all of them in one transfer when a hook, the progress line, a checkpoint or the end of
the epoch asks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepOutcome:
    """One step's results, still on the device. ``loss`` is NaN for a step the ``skip`` policy
    dropped; ``finite`` is None where the step checked itself (and synced) already."""

    loss: torch.Tensor  # 0-dim float32, detached
    hits: torch.Tensor  # 0-dim integer: correct predictions in the batch
    finite: torch.Tensor | None = None  # 0-dim bool: loss and gradients finite


@dataclass(frozen=True)
class StepValues:
    """One step's results on the host."""

    step: int  # global step
    size: int  # images in the batch
    loss: float
    hits: int
    finite: bool


class PendingSteps:
    """Outcomes in step order since the last :meth:`collect`."""

    def __init__(self) -> None:
        self._keys: list[tuple[int, int]] = []  # (global step, batch size)
        self._outcomes: list[StepOutcome] = []

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, step: int, size: int, outcome: StepOutcome) -> None:
        self._keys.append((step, size))
        self._outcomes.append(outcome)

    def collect(self) -> list[StepValues]:
        """Every pending step's values, read in one host sync; empties the list."""
        if not self._keys:
            return []
        outcomes, keys = self._outcomes, self._keys
        self._keys, self._outcomes = [], []
        no_flag = torch.ones((), dtype=torch.bool, device=outcomes[0].loss.device)
        columns = [torch.stack([o.loss for o in outcomes]),
                   torch.stack([o.hits for o in outcomes]),
                   torch.stack([no_flag if o.finite is None else o.finite for o in outcomes])]
        # float64 holds float32 losses, counts below 2**53 and flags exactly: one transfer.
        losses, hits, finite = torch.stack([c.double() for c in columns]).tolist()
        return [StepValues(step, size, loss, int(hit), bool(flag))
                for (step, size), loss, hit, flag in zip(keys, losses, hits, finite, strict=True)]
