"""Hierarchical feature-sharing networks: dense stages, phi projections, a multi-level head."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from hfsnet.models.base import ModelEntry, StagedClassifier
from hfsnet.models.head import LevelHead, fused_levels
from hfsnet.models.layers import ACTIVATIONS, DenseStage, WhiteningStem, projection
from hfsnet.models.layers import activation as act_layer
from hfsnet.models.options import (
    MAX_LAYERS,
    MAX_STAGES,
    ModelOptions,
    check_bool,
    check_choice,
    check_fraction,
    check_image_size,
    check_int,
    check_ints,
    is_int,
    is_number,
    refuse,
)

POOLS = ("avg", "max")


@dataclass
class HFSOptions(ModelOptions):
    """``stages``: dense layers per stage. ``growth``: channels each layer adds (one value, or
    one per stage). ``stem``: the first conv's width (0: none). ``bottleneck``: a 1x1 conv
    squeezes each layer's input to ``bottleneck * growth`` channels first (0: none).
    ``projection_widths``: phi's output width per projected stage (a list), or a compression
    ratio in (0, 1] applied to every stage but the last (DenseNet-BC). ``project_last``: give
    the last stage a phi and pool as well (seed style); otherwise it ends in norm+ReLU (DenseNet
    style). ``norm``: batch norms; ``preact``: BN-act-conv order (else conv-BN-act). ``pool``:
    ``avg`` or ``max`` between stages. Dropouts: after each stage, after each dense layer, in
    the head. ``fuse``: the head reads every stage (else the last only). ``hidden``: the head's
    hidden layer width (0: none). ``memory_efficient``: recompute the dense layers' cheap parts
    in backward. ``whiten``: a fixed patch-whitening 2x2 convolution (``WhiteningStem``) instead
    of the learned ``stem`` conv. ``activation``: ``relu``, ``silu`` or ``gelu`` everywhere in
    the trunk. ``image_size`` is accepted like every model's options; this net is fully
    convolutional and needs none.
    """

    stages: Sequence[int] = (16, 16, 16)
    growth: int | Sequence[int] = 12
    stem: int = 24
    bottleneck: int = 4
    projection_widths: float | Sequence[int] = 0.5
    project_last: bool = False
    norm: bool = True
    preact: bool = True
    pool: str = "avg"
    stage_dropout: float = 0.0
    layer_dropout: float = 0.0
    fuse: bool = True
    hidden: int = 0
    head_dropout: float = 0.0
    memory_efficient: bool = False
    whiten: bool = False
    activation: str = "relu"
    image_size: int | None = None

    def validate(self) -> None:
        check_ints("stages", self.stages, max_length=MAX_STAGES)
        if sum(self.stages) > MAX_LAYERS:
            raise refuse("stages", f"at most {MAX_LAYERS} dense layers in all", self.stages)
        n = len(self.stages)
        if not is_int(self.growth):
            check_ints("growth", self.growth, lengths=[n])
        else:
            check_int("growth", self.growth)
        check_int("stem", self.stem, minimum=0)
        check_int("bottleneck", self.bottleneck, minimum=0)
        self._check_projection(n)
        for name in ("project_last", "norm", "preact", "fuse", "memory_efficient", "whiten"):
            check_bool(name, getattr(self, name))
        check_choice("pool", self.pool, POOLS)
        for name in ("stage_dropout", "layer_dropout", "head_dropout"):
            check_fraction(name, getattr(self, name))
        check_int("hidden", self.hidden, minimum=0)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_image_size(self.image_size)
        if self.whiten and self.stem:
            raise refuse("stem", "0 with whiten (the whitening stem replaces the conv stem): "
                         "pass stem=0", self.stem)

    def _check_projection(self, n_stages: int) -> None:
        spec = self.projection_widths
        if is_number(spec):
            if not 0 < spec <= 1:  # type: ignore[operator]
                raise refuse("projection_widths", "a compression ratio in (0, 1] or a list of "
                             "widths", spec)
            return
        projected = n_stages if self.project_last else n_stages - 1
        check_ints("projection_widths", spec, lengths=[projected, n_stages])

    def growths(self) -> list[int]:
        n = len(self.stages)
        return [self.growth] * n if is_int(self.growth) else list(self.growth)  # type: ignore


class HFSNet(StagedClassifier):
    """Stages of dense layers. Between stages a 1x1 projection (phi) compresses the stage's
    concatenation and a 2x2 pool halves the resolution; the head fuses every stage. The options
    are :class:`HFSOptions`'.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 options: HFSOptions | None = None) -> None:
        super().__init__()
        o = options or HFSOptions()
        n = len(o.stages)
        self.stem, channels = self._stem(in_channels, o.stem, o.whiten, o.activation)
        self.blocks = nn.ModuleList()
        self.level_channels: list[int] = []
        for i, (n_layers, k) in enumerate(zip(o.stages, o.growths(), strict=True)):
            dense = DenseStage(
                channels, k, n_layers, bottleneck=o.bottleneck, norm=o.norm, preact=o.preact,
                dropout=o.layer_dropout, memory_efficient=o.memory_efficient, act=o.activation,
            )
            last = i == n - 1
            tail: list[nn.Module] = []
            channels = dense.out_channels
            if last and not o.project_last:
                if o.preact:
                    tail += [nn.BatchNorm2d(channels)] if o.norm else []
                    tail.append(act_layer(o.activation, inplace=True))
            else:
                width = self._projection_width(o.projection_widths, channels, i)
                tail.append(projection(channels, width, norm=o.norm, preact=o.preact,
                                       act=o.activation))
                tail.append(nn.AvgPool2d(2) if o.pool == "avg" else nn.MaxPool2d(2))
                channels = width
            if o.stage_dropout:
                tail.append(nn.Dropout(o.stage_dropout))
            self.blocks.append(nn.Sequential(dense, *tail))
            self.level_channels.append(channels)
        self.head = LevelHead(self.level_channels, fused_levels(n, o.fuse), "gap", num_classes,
                              o.hidden, dropout=o.head_dropout)
        self._init_weights()

    @staticmethod
    def _stem(in_channels: int, width: int, whiten: bool,
              act: str) -> tuple[nn.Module | None, int]:
        """(stem module or None, its output channels)."""
        if whiten:
            stem = WhiteningStem(in_channels, act)
            return stem, stem.out_channels
        if width:
            return nn.Conv2d(in_channels, width, 3, padding=1, bias=False), width
        return None, in_channels

    @staticmethod
    def _projection_width(spec: float | Sequence[int], channels: int, stage: int) -> int:
        if isinstance(spec, (int, float)):
            return max(1, int(channels * spec))
        return int(spec[stage])

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _bc(depth: int, growth: int, **extra: object) -> ModelEntry:
    """DenseNet-BC for CIFAR: (depth - 4) / 6 bottleneck layers in each of 3 stages."""
    n = (depth - 4) // 6
    return ModelEntry(
        f"hfs-bc-{depth}-{growth}", HFSNet, HFSOptions,
        f"DenseNet-BC L={depth} k={growth} as a feature-sharing net with a fusion head",
        {"stages": (n, n, n), "growth": growth, "stem": 2 * growth, **extra},
    )


ENTRIES = (
    ModelEntry("hfs", HFSNet, HFSOptions, "configurable feature-sharing net (defaults: "
               "DenseNet-BC L=100 k=12 with a fusion head)"),
    ModelEntry(
        "hfs-seed", HFSNet, HFSOptions,
        "the seed's feature-sharing net: dense stages of 2x32 and 2x64 convs, phi, fused head",
        {"stages": (2, 2), "growth": (32, 64), "stem": 0, "bottleneck": 0,
         "projection_widths": (32, 64), "project_last": True, "norm": False, "preact": False,
         "pool": "max", "stage_dropout": 0.25, "hidden": 512, "head_dropout": 0.5},
    ),
    # The fast preset: a whitened 2x2 stem (31x31), then stages of 1, 2 and 2 dense
    # Conv-BN-SiLU layers at 31, 15 and 7 px, each stage's concatenation projected by phi and
    # max-pooled; the head fuses all three levels. 41 MMACs per 32x32 image forward (a 7th of
    # hfs-bc-100-12's 290), which is what a 2-core CPU can afford for 5 minutes.
    ModelEntry(
        "hfs-fast", HFSNet, HFSOptions,
        "fast CPU feature-sharing net: whitened stem, SiLU dense stages 1/2/2, fused head",
        {"stages": (1, 2, 2), "growth": (32, 48, 96), "stem": 0, "whiten": True,
         "bottleneck": 0, "projection_widths": (48, 96, 192), "project_last": True,
         "norm": True, "preact": False, "pool": "max", "activation": "silu"},
    ),
    _bc(100, 12),
    _bc(190, 12, memory_efficient=True),  # deep but narrow: the CPU memory benchmark
    _bc(190, 40, memory_efficient=True),
    _bc(250, 24, memory_efficient=True),
)
