"""``--whiten-bias-epochs``: the whitening stem's bias trains for the first epochs, then stays.

airbench94_muon trains its whitening conv's bias for 3 of its 8 epochs and detaches it after:
the first layer settles early and later steps only add noise to everything built on it. Here an
epoch hook turns the bias's ``requires_grad`` on or off at the start of every epoch (a resumed
run too, since the hook is a function of the epoch alone): a frozen bias gets no gradient, so no
optimizer step, decay or momentum touches it and it stays bit-identical.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from hfsnet.models.layers import WhiteningStem
from hfsnet.train.config import ConfigError

if TYPE_CHECKING:
    from hfsnet.train.loop import Trainer


def whitening_bias(model: nn.Module) -> nn.Parameter | None:
    """The bias of the model's whitening stem, None when it has none."""
    stem = getattr(model, "stem", None)
    return stem.bias if isinstance(stem, WhiteningStem) else None


class WhitenBiasFreeze:
    """An epoch hook: ``bias`` trains during epochs ``0 .. epochs - 1`` and is frozen after."""

    def __init__(self, bias: nn.Parameter, epochs: int) -> None:
        self.bias = bias
        self.epochs = epochs

    def __call__(self, trainer: Trainer, epoch: int) -> None:
        self.bias.requires_grad_(epoch < self.epochs)


def install(trainer: Trainer) -> None:
    """Register the hook ``trainer.config`` asks for (none for ``whiten_bias_epochs`` 0)."""
    epochs = trainer.config.whiten_bias_epochs
    if not epochs:
        return
    bias = whitening_bias(trainer.model)
    if bias is None:
        raise ConfigError(f"--whiten-bias-epochs {epochs}: model {trainer.config.model!r} has no "
                          "whitening-stem bias (an hfs-air net with --model-opt "
                          "whiten_bias=true has one), or pass --whiten-bias-epochs 0")
    if trainer.dist.enabled:
        # DDP's gradient reducer is built for a fixed set of parameters that get gradients.
        raise ConfigError(f"--whiten-bias-epochs {epochs} freezes a parameter mid-run, which "
                          "DistributedDataParallel does not allow: train in one process or "
                          "pass --whiten-bias-epochs 0")
    trainer.epoch_hooks.append(WhitenBiasFreeze(bias, epochs))
