"""Hierarchical feature-sharing networks: dense stages, phi projections, a multi-level head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from hfsnet.models.base import StagedClassifier
from hfsnet.models.layers import DenseStage, FusionHead, WhiteningStem, projection
from hfsnet.models.layers import activation as act_layer
from hfsnet.models.registry import register, register_entry


def _per_stage(value: int | Sequence[int], n_stages: int, name: str) -> list[int]:
    values = [value] * n_stages if isinstance(value, int) else list(value)
    if len(values) != n_stages:
        raise ValueError(f"{name}: expected {n_stages} values (one per stage), got {values}")
    return values


class HFSNet(StagedClassifier):
    """Stages of dense layers. Between stages a 1x1 projection (phi) compresses the stage's
    concatenation and a 2x2 pool halves the resolution; the head fuses every stage.

    ``stages``: dense layers per stage. ``growth``: channels each layer adds (one value, or one
    per stage). ``projection``: phi's output width per stage (a list), or a float compression
    ratio applied to every stage but the last (DenseNet-BC). ``project_last``: give the last
    stage a phi and pool as well (seed style); otherwise it ends in norm+ReLU (DenseNet style).
    ``whiten``: a fixed patch-whitening 2x2 convolution (``WhiteningStem``) instead of the
    learned ``stem`` conv. ``activation``: ``relu``, ``silu`` or ``gelu`` everywhere in the trunk.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        stages: Sequence[int] = (16, 16, 16),
        growth: int | Sequence[int] = 12,
        stem: int = 24,
        bottleneck: int = 4,
        projection_widths: float | Sequence[int] = 0.5,
        project_last: bool = False,
        norm: bool = True,
        preact: bool = True,
        pool: str = "avg",
        stage_dropout: float = 0.0,
        layer_dropout: float = 0.0,
        fusion: bool = True,
        hidden: int = 0,
        head_dropout: float = 0.0,
        memory_efficient: bool = False,
        whiten: bool = False,
        activation: str = "relu",
        image_size: int | None = None,
    ) -> None:
        # image_size is accepted so every model takes the same constructor arguments; this net
        # is fully convolutional and needs no input size.
        del image_size
        super().__init__()
        n = len(stages)
        growths = _per_stage(growth, n, "growth")
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.stem, channels = self._stem(in_channels, stem, whiten, activation)
        self.blocks = nn.ModuleList()
        self.level_channels: list[int] = []
        for i, (n_layers, k) in enumerate(zip(stages, growths, strict=True)):
            dense = DenseStage(
                channels, k, n_layers, bottleneck=bottleneck, norm=norm, preact=preact,
                dropout=layer_dropout, memory_efficient=memory_efficient, act=activation,
            )
            last = i == n - 1
            tail: list[nn.Module] = []
            channels = dense.out_channels
            if last and not project_last:
                if preact:
                    tail += [nn.BatchNorm2d(channels)] if norm else []
                    tail.append(act_layer(activation, inplace=True))
            else:
                width = self._projection_width(projection_widths, channels, i)
                tail.append(projection(channels, width, norm=norm, preact=preact,
                                       act=activation))
                tail.append(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2))
                channels = width
            if stage_dropout:
                tail.append(nn.Dropout(stage_dropout))
            self.blocks.append(nn.Sequential(dense, *tail))
            self.level_channels.append(channels)
        self.head = FusionHead(
            self.level_channels, num_classes, fuse=fusion, hidden=hidden, dropout=head_dropout
        )
        self._init_weights()

    @staticmethod
    def _stem(in_channels: int, width: int, whiten: bool,
              act: str) -> tuple[nn.Module | None, int]:
        """(stem module or None, its output channels)."""
        if whiten:
            if width:
                raise ValueError(f"whiten replaces the conv stem: pass stem=0, got stem={width}")
            stem = WhiteningStem(in_channels, act)
            return stem, stem.out_channels
        if width:
            return nn.Conv2d(in_channels, width, 3, padding=1, bias=False), width
        return None, in_channels

    @staticmethod
    def _projection_width(spec: float | Sequence[int], channels: int, stage: int) -> int:
        if isinstance(spec, (int, float)):
            if not 0 < spec <= 1:
                raise ValueError(f"projection compression must be in (0, 1], got {spec}")
            return max(1, int(channels * spec))
        return int(spec[stage])

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


register(
    "hfs",
    "configurable feature-sharing net (defaults: DenseNet-BC L=100 k=12 with a fusion head)",
)(HFSNet)

register(
    "hfs-seed",
    "the seed's feature-sharing net: dense stages of 2x32 and 2x64 convs, phi, fused head",
    stages=(2, 2),
    growth=(32, 64),
    stem=0,
    bottleneck=0,
    projection_widths=(32, 64),
    project_last=True,
    norm=False,
    preact=False,
    pool="max",
    stage_dropout=0.25,
    hidden=512,
    head_dropout=0.5,
)(HFSNet)


# The fast preset (``--recipe fast``): a whitened 2x2 stem (31x31), then stages of 1, 2 and 2
# dense Conv-BN-SiLU layers at 31, 15 and 7 px, each stage's concatenation projected by phi and
# max-pooled; the head fuses all three levels. 41 MMACs per 32x32 image forward (a 7th of
# hfs-bc-100-12's 290), which is what a 2-core CPU can afford for 5 minutes.
register(
    "hfs-fast",
    "fast CPU feature-sharing net: whitened stem, SiLU dense stages 1/2/2, fused head",
    stages=(1, 2, 2),
    growth=(32, 48, 96),
    stem=0,
    whiten=True,
    bottleneck=0,
    projection_widths=(48, 96, 192),
    project_last=True,
    norm=True,
    preact=False,
    pool="max",
    activation="silu",
)(HFSNet)


def _register_bc(depth: int, growth: int, **extra: object) -> None:
    """DenseNet-BC for CIFAR: (depth - 4) / 6 bottleneck layers in each of 3 stages."""
    if (depth - 4) % 6:
        raise ValueError(f"DenseNet-BC depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    register_entry(
        f"hfs-bc-{depth}-{growth}",
        HFSNet,
        f"DenseNet-BC L={depth} k={growth} as a feature-sharing net with a fusion head",
        stages=(n, n, n),
        growth=growth,
        stem=2 * growth,
        **extra,
    )


_register_bc(100, 12)
_register_bc(190, 12, memory_efficient=True)  # deep but narrow: the CPU memory benchmark
_register_bc(190, 40, memory_efficient=True)
_register_bc(250, 24, memory_efficient=True)
