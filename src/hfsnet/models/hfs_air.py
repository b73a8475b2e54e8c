"""A feature-sharing net laid out for speed, after Keller Jordan's airbench (2024).

Each stage is a *pooled* dense pair: ``a = act(bn(pool(conv(x))))`` halves the resolution right
after its first conv (so norm, activation and the second conv run on a quarter of the pixels),
then ``b = act(bn(conv(a)))`` reads ``a``, and phi (a 1x1 conv) compresses the concatenation
``[a, b]`` into the stage output. The head fuses the globally max-pooled output of every stage.
The trunk starts with the fixed patch-whitening 2x2 conv. All training-speed choices are
airbench's: batch norms whose scale is frozen at 1 (only the shift learns, at a higher rate:
see ``TrainConfig.norm_lr_scale``), a fast running-statistics momentum, identity (Dirac)
initialisation of the 3x3 convs, and logits scaled down by ``logit_scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hfsnet.models.base import ModelEntry, StagedClassifier
from hfsnet.models.head import LevelHead, fused_levels
from hfsnet.models.layers import ACTIVATIONS, WhiteningStem
from hfsnet.models.layers import activation as act_layer
from hfsnet.models.options import (
    MAX_STAGES,
    ModelOptions,
    check_bool,
    check_choice,
    check_image_size,
    check_ints,
    check_positive,
    is_number,
    refuse,
)


class ConcatPointwise(nn.Conv2d):
    """A bias-free 1x1 conv over the channel concatenation of ``parts``, applied as the sum of
    its weight's slices over each part.

    The map is the concatenation's, but the backward hands each part its gradient in the
    part's own (channels-last) layout. Through ``torch.cat`` each part got a strided slice of
    the concatenation's gradient, which sent the GELU backward behind it down a slow path: a
    hfs-air-s training step (bf16, channels-last) ran 5% slower that way.
    """

    def __init__(self, part_channels: Sequence[int], out_channels: int) -> None:
        super().__init__(sum(part_channels), out_channels, 1, bias=False)
        self.part_channels = list(part_channels)

    def forward(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        weights = self.weight.split(self.part_channels, 1)
        out = F.conv2d(parts[0], weights[0])
        for part, weight in zip(parts[1:], weights[1:], strict=True):
            out = out + F.conv2d(part, weight)
        return out


def frozen_scale_norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    """BN whose scale stays 1: with a scale-invariant conv before it, a learned scale only
    competes with the weight norm; the shift still learns."""
    norm = nn.BatchNorm2d(channels, momentum=momentum, eps=1e-12)
    norm.weight.requires_grad_(False)
    return norm


class PooledDenseStage(nn.Module):
    """conv3x3 -> maxpool 2 -> BN -> act = a; conv3x3(a) -> BN -> act = b; phi([a, b])."""

    def __init__(self, in_ch: int, width: int, *, act: str, momentum: float,
                 share: bool = True) -> None:
        super().__init__()
        self.first = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.MaxPool2d(2),
            frozen_scale_norm(width, momentum), act_layer(act, inplace=True))
        self.second = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            frozen_scale_norm(width, momentum), act_layer(act, inplace=True))
        # Without sharing the stage is airbench's plain block, its output ``b``: the ablation.
        self.phi = nn.Sequential(
            ConcatPointwise((width, width), width),
            frozen_scale_norm(width, momentum), act_layer(act, inplace=True)) if share else None

    @torch.no_grad()
    def init_residual(self) -> None:
        """phi starts as ``a + b``: the stage begins as a residual block and the training
        decides how to mix what it shares."""
        if self.phi is None:
            return
        w = self.phi[0].weight
        w.zero_()
        width = w.shape[0]
        for half in (slice(0, width), slice(width, 2 * width)):
            nn.init.dirac_(w[:, half])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.first(x)
        if self.phi is None:
            return self.second(a)
        return self.phi((a, self.second(a)))


@dataclass
class AirOptions(ModelOptions):
    """``widths``: each stage's width. ``momentum``: PyTorch's BN momentum (airbench's 0.6 in
    its convention is 0.4 here). ``logit_scale``: the head's output multiplier; with label
    smoothing it sets how confident the net can get for a given weight norm. ``share=False``
    drops phi (each stage outputs its second conv, as in airbench) and ``fuse=False`` makes the
    head read the last stage only: with both off the net is airbench's, the ablation that
    measures what feature sharing adds. ``whiten_bias``: give the whitening stem a trained
    bias (airbench94_muon's; ``TrainConfig.whiten_bias_epochs`` freezes it after a while).
    ``image_size``: accepted like every model's options (the net is fully convolutional).
    """

    widths: Sequence[int] = (64, 256, 256)
    activation: str = "gelu"
    momentum: float = 0.4
    logit_scale: float = 1 / 9
    share: bool = True
    fuse: bool = True
    whiten_bias: bool = False
    image_size: int | None = None

    def validate(self) -> None:
        check_ints("widths", self.widths, max_length=MAX_STAGES)
        check_choice("activation", self.activation, ACTIVATIONS)
        if not is_number(self.momentum) or not 0 <= self.momentum <= 1:
            raise refuse("momentum", "a number in [0, 1]", self.momentum)
        check_positive("logit_scale", self.logit_scale)
        check_bool("share", self.share)
        check_bool("fuse", self.fuse)
        check_bool("whiten_bias", self.whiten_bias)
        check_image_size(self.image_size)
        # The 2x2 whitening conv takes a pixel off, then every stage halves the side.
        smallest = 2 ** len(self.widths) + 1
        if self.image_size is not None and self.image_size < smallest:
            raise refuse("image_size", f"at least {smallest} px for {len(self.widths)} pooled "
                         "stages", self.image_size)


class AirHFSNet(StagedClassifier):
    """Whitening stem, then one :class:`PooledDenseStage` per entry of ``widths``; the head
    fuses the globally max-pooled stages with one bias-free linear layer, scaled. The options
    are :class:`AirOptions`'."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 options: AirOptions | None = None) -> None:
        super().__init__()
        o = options or AirOptions()
        self.stem = WhiteningStem(in_channels, o.activation, bias=o.whiten_bias)
        channels = self.stem.out_channels
        self.blocks = nn.ModuleList()
        for width in o.widths:
            self.blocks.append(PooledDenseStage(channels, width, act=o.activation,
                                                momentum=o.momentum, share=o.share))
            channels = width
        self.level_channels = list(o.widths)
        self.head = LevelHead(self.level_channels, fused_levels(len(o.widths), o.fuse), "max",
                              num_classes, bias=False, scale=o.logit_scale)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                # Identity on the first min(in, out) channels: every stage starts by passing
                # its input through, which airbench finds worth a fraction of an epoch.
                n = min(m.in_channels, m.out_channels)
                with torch.no_grad():
                    nn.init.dirac_(m.weight[:n, :n])
            elif isinstance(m, PooledDenseStage):
                m.init_residual()


ENTRIES = (
    ModelEntry("hfs-air", AirHFSNet, AirOptions, "airbench-style pooled dense stages "
               "64/256/256 (airbench94's widths), fused head"),
    ModelEntry("hfs-air-m", AirHFSNet, AirOptions,
               "hfs-air at widths 64/128/128 (airbench93's)",
               {"widths": (64, 128, 128)}),
    ModelEntry("hfs-air-s", AirHFSNet, AirOptions, "hfs-air at widths 32/128/128",
               {"widths": (32, 128, 128)}),
    # The same nets without feature sharing (airbench's plain layout): the fast recipes' nets
    # (at their budgets sharing bought no accuracy for its time per step, docs/performance.md
    # 5d) and the baselines `hfsnet compare` sets the hfs-air nets against.
    ModelEntry("air-plain-s", AirHFSNet, AirOptions,
               "hfs-air-s without phi or the fused head (airbench's plain net): --recipe fast",
               {"widths": (32, 128, 128), "share": False, "fuse": False}),
    ModelEntry("air-plain-m", AirHFSNet, AirOptions,
               "hfs-air-m without phi or the fused head (airbench's plain net): --recipe "
               "fast-long",
               {"widths": (64, 128, 128), "share": False, "fuse": False}),
    ModelEntry("air-plain", AirHFSNet, AirOptions,
               "hfs-air without phi or the fused head: airbench94's net, --recipe airbench94",
               {"share": False, "fuse": False}),
)
