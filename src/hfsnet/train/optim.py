"""Optimizers over named parameter groups; weight decay skips norms and biases (unless asked)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hfsnet.train.config import TrainConfig
from hfsnet.train.muon import MUON_LR_RATIO, Muon


@dataclass
class ParamGroup:
    """Parameters that share a base learning rate (e.g. "trunk" and "head" when fine-tuning)."""

    name: str
    params: list[nn.Parameter]
    lr: float


def split_decay(params: Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): 1-D tensors are norm scales/shifts and biases, which weight decay
    only pulls towards zero without regularising anything useful."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


@dataclass(frozen=True)
class MuonSettings:
    """What ``--optimizer muon`` gives its filter groups: ``lr_ratio`` times their named
    ParamGroup's rate, ``momentum`` (None: the SGD groups'), and
    :class:`~hfsnet.train.muon.Muon`'s ``ns_steps`` and ``normalize``."""

    lr_ratio: float = MUON_LR_RATIO
    momentum: float | None = None
    steps: int = 5
    normalize: bool = False

    @classmethod
    def of(cls, config: TrainConfig) -> MuonSettings:
        """A run's settings: ``muon_lr`` is the rate of filters in a group at ``lr``."""
        ratio = MUON_LR_RATIO if config.muon_lr is None else config.muon_lr / config.lr
        return cls(ratio, config.muon_momentum, config.muon_steps, config.muon_normalize)

    def group_options(self, group_lr: float) -> dict[str, Any]:
        options: dict[str, Any] = {"lr": group_lr * self.lr_ratio, "ns_steps": self.steps,
                                   "normalize": self.normalize}
        if self.momentum is not None:
            options["momentum"] = self.momentum
        return options


def build_optimizer(
    groups: Sequence[ParamGroup],
    kind: str,
    *,
    weight_decay: float,
    momentum: float = 0.9,
    no_decay_lr_scale: float = 1.0,
    decay_norms: bool = False,
    muon: MuonSettings | None = None,
) -> torch.optim.Optimizer:
    """One optimizer param group per (named group, decay/no-decay); each remembers its
    ``base_lr`` so that a schedule can scale every group by the same factor. The no-decay
    half (norm shifts, biases) learns at ``no_decay_lr_scale`` times the group's rate and, with
    ``decay_norms``, is decayed by the same fraction per step as the weights (its weight decay
    divided by that scale) instead of not at all.

    ``muon`` also splits off each group's conv filters (3-D and up) into a ``<name>.muon``
    group that :class:`~hfsnet.train.muon.Muon` orthogonalises, as ``muon`` (the settings)
    says; the rest, 2-D heads included, takes Nesterov SGD steps as under ``sgd``."""
    muon = muon or MuonSettings()
    no_decay_wd = weight_decay / no_decay_lr_scale if decay_norms else 0.0
    torch_groups = []
    for group in groups:
        decay, no_decay = split_decay(group.params)
        # Muon's filters: the record orthogonalises conv filter banks only; hidden linear
        # layers exist here only in heads, which Muon's author keeps on a scalar optimizer.
        filters = [p for p in decay if kind == "muon" and p.ndim >= 3]
        decay = [p for p in decay if not (kind == "muon" and p.ndim >= 3)]
        parts = ((decay, {"weight_decay": weight_decay, "lr": group.lr}, "", False),
                 (no_decay, {"weight_decay": no_decay_wd, "lr": group.lr * no_decay_lr_scale},
                  ".no_decay", False),
                 (filters, {"weight_decay": weight_decay,
                            **muon.group_options(group.lr)}, ".muon", True))
        for params, options, suffix, is_muon in parts:
            if params:
                torch_group = {"params": params, **options, "base_lr": options["lr"],
                               "name": group.name + suffix}
                if kind == "muon":
                    torch_group["muon"] = is_muon
                torch_groups.append(torch_group)
    if not torch_groups:
        raise ValueError("no trainable parameters: everything is frozen")
    if kind == "sgd":
        return torch.optim.SGD(torch_groups, lr=groups[0].lr, momentum=momentum, nesterov=True)
    if kind == "muon":
        return Muon(torch_groups, lr=groups[0].lr, momentum=momentum, nesterov=True)
    if kind == "adam":
        # Adam's own weight_decay is L2 in the gradient, as Keras' Adam; adamw decouples it.
        return torch.optim.Adam(torch_groups, lr=groups[0].lr)
    if kind == "adamw":
        return torch.optim.AdamW(torch_groups, lr=groups[0].lr)
    raise ValueError(f"unknown optimizer {kind!r}")


def optimizer_for(config: TrainConfig, groups: Sequence[ParamGroup]) -> torch.optim.Optimizer:
    """The optimizer ``config`` asks for over ``groups``, with its fused kernel where it has
    one: every optimizer setting of a TrainConfig reaches the optimizer through here."""
    return fused(build_optimizer(groups, config.optimizer, weight_decay=config.weight_decay,
                                 momentum=config.momentum,
                                 no_decay_lr_scale=config.norm_lr_scale,
                                 decay_norms=config.decay_norms,
                                 muon=MuonSettings.of(config)))


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def fused(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer, groups and hyperparameters, running its fused kernel: one pass over
    all parameters per step instead of ~10 small ops per tensor. On CPU PyTorch otherwise picks
    the per-tensor loop (Adam on seed-cnn, batch 32: 8% of the step time). An optimizer
    without a fused kernel (no ``fused`` argument, e.g. Muon) comes back unchanged."""
    if "fused" not in inspect.signature(type(optimizer)).parameters:
        return optimizer
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")}
              for g in optimizer.param_groups]
    accepted = set(inspect.signature(type(optimizer)).parameters) - {"fused", "foreach"}
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return type(optimizer)(groups, **defaults, fused=True)
