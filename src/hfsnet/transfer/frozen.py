"""A fast inference-only copy of a frozen trunk's ``forward_features``.

The trunk is deep-copied (the original is never touched), every batch norm that directly
follows a convolution is folded into it (also through a max pool, when the norm's scale is
positive: max commutes with a positive per-channel affine map), activations whose input nothing
else reads run in place, 'same'-padding convs that pad as much on each side become plain convs
that pad inside the convolution, and the copy runs channels-last, in bf16 autocast when asked, and
optionally compiled by inductor. Conv->norm pairs are found on the ``torch.fx`` graph of
``forward_features`` (which sees every use of a tensor, so a conv output read by anything besides
its norm is left alone); when the trunk does not trace, consecutive children of
``nn.Sequential`` containers are the fallback.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from hfsnet.models import FeatureClassifier
from hfsnet.train.runtime import autocast
from hfsnet.transfer.errors import CacheError

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
INPLACE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardtanh, nn.Hardswish, nn.ELU)
# ``compile="auto"`` compiles when the eager pass over the run would take longer than compiling
# plus the compiled pass. benchmarks/feature_pass.py measured EfficientNet-Lite0 on the 2-core
# development CPU (results/feature_pass.json, under load): compiling took 24-50 s and made the
# folded pass 1.4-2.4x faster (64 and 224 px, fp32 and bf16); rounded in compile's disfavour.
COMPILE_SECONDS = 60.0
COMPILE_SPEEDUP = 1.4
FOLD_RTOL = 1e-3  # the folded copy against the original on the first batch, fp32


class FrozenTrunkError(CacheError):
    """A bad ``compile`` setting."""


@dataclass(frozen=True)
class ConvNorm:
    """A conv whose output feeds only ``norm`` (directly, or through a max pool)."""

    conv: str  # qualified module names inside the traced root
    norm: str
    through_pool: bool = False


class _Features(nn.Module):
    """``forward_features`` as a plain ``forward``: the root fx traces and inductor compiles."""

    def __init__(self, model: FeatureClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_features(x)


class _LeafTracer(torch.fx.Tracer):
    """Convs and norms (subclasses included, such as 'same'-padding convs) stay single nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            return True
        return super().is_leaf_module(m, qualname)


class ChannelShift(nn.Module):
    """Adds a per-channel bias: a folded norm's shift, for a conv whose forward ignores
    ``bias`` (hfs-air's ``ConcatPointwise``)."""

    def __init__(self, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift.to(x.dtype)  # as a norm would: in its input's dtype


def _module_calls(graph: torch.fx.Graph) -> dict[str, list[torch.fx.Node]]:
    calls: dict[str, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    return calls


def _sole_feeder(node: torch.fx.Node) -> torch.fx.Node | None:
    """The node computing ``node``'s first input, when ``node`` is its only reader."""
    source = node.args[0] if node.args else None
    if isinstance(source, torch.fx.Node) and len(source.users) == 1:
        return source
    return None


def fx_pairs(root: nn.Module, graph: torch.fx.Graph) -> list[ConvNorm]:
    """Conv->norm pairs on the traced graph; each module called once, each conv read only by
    its norm (or by a max pool read only by the norm)."""
    calls = _module_calls(graph)
    pairs = []
    for name, nodes in calls.items():
        if not isinstance(root.get_submodule(name), nn.BatchNorm2d) or len(nodes) != 1:
            continue
        feeder = _sole_feeder(nodes[0])
        through_pool = False
        if feeder is not None and feeder.op == "call_module" and isinstance(
                root.get_submodule(str(feeder.target)), nn.MaxPool2d):
            feeder, through_pool = _sole_feeder(feeder), True
        if feeder is None or feeder.op != "call_module":
            continue
        conv = str(feeder.target)
        if isinstance(root.get_submodule(conv), nn.Conv2d) and len(calls[conv]) == 1:
            pairs.append(ConvNorm(conv, name, through_pool))
    return pairs


def sequential_pairs(root: nn.Module) -> list[ConvNorm]:
    """Conv->norm (or conv->max pool->norm) as consecutive children of an ``nn.Sequential``:
    the fallback for trunks fx cannot trace."""
    pairs = []
    for prefix, module in root.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for i, (name, child) in enumerate(children[:-1]):
            if not isinstance(child, nn.Conv2d):
                continue
            nxt = children[i + 1][1]
            through_pool = isinstance(nxt, nn.MaxPool2d) and i + 2 < len(children)
            norm_name, norm = children[i + 2] if through_pool else children[i + 1]
            if isinstance(norm, nn.BatchNorm2d):
                dot = f"{prefix}." if prefix else ""
                pairs.append(ConvNorm(dot + name, dot + norm_name, through_pool))
    return pairs


def _honours_bias(conv: nn.Conv2d) -> bool:
    """Whether ``conv``'s forward adds ``conv.bias``: nn.Conv2d's does, and so do the
    'same'-padding subclasses of efficientnet_lite_pytorch (they pass it to F.conv2d)."""
    return type(conv).forward is nn.Conv2d.forward or type(conv).__module__.startswith(
        "efficientnet_lite_pytorch.")


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)


@torch.no_grad()
def fold(root: nn.Module, pair: ConvNorm) -> bool:
    """Fold ``pair``'s norm into its conv, in place; False (nothing changed) where a max pool
    sits between them and some channel's scale is not positive."""
    conv: nn.Conv2d = root.get_submodule(pair.conv)
    norm: nn.BatchNorm2d = root.get_submodule(pair.norm)
    assert norm.running_var is not None and norm.running_mean is not None
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    if pair.through_pool and not bool((scale > 0).all()):
        return False
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    dtype = conv.weight.dtype
    conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype))
    if _honours_bias(conv):
        old = conv.bias.double() if conv.bias is not None else 0.0
        conv.bias = nn.Parameter((old * scale + shift).to(dtype), requires_grad=False)
        _replace(root, pair.norm, nn.Identity())
    else:
        _replace(root, pair.norm, ChannelShift(shift.to(dtype)))
    return True


def _fresh_sole_input(root: nn.Module, node: torch.fx.Node) -> bool:
    """Whether ``node`` reads a conv's or norm's output that nothing else reads. Only those:
    modules such as Identity or Dropout in eval mode return their input itself, which other
    nodes may still read."""
    feeder = _sole_feeder(node)
    return feeder is not None and feeder.op == "call_module" and isinstance(
        root.get_submodule(str(feeder.target)), (nn.Conv2d, nn.BatchNorm2d))


def _inplace_activations(root: nn.Module, graph: torch.fx.Graph) -> int:
    """Switch activations to in place where every call reads a fresh tensor nothing else
    reads (a folded norm becomes an Identity, but its conv's output was read by it alone)."""
    switched = 0
    for name, nodes in _module_calls(graph).items():
        act = root.get_submodule(name)
        if not isinstance(act, INPLACE_ACTIVATIONS) or getattr(act, "inplace", True):
            continue
        if all(_fresh_sole_input(root, node) for node in nodes):
            act.inplace = True
            switched += 1
    return switched


def _symmetric_padding(conv: nn.Module) -> tuple[int, int] | None:
    """(height, width) padding of a 'same'-padding conv of efficientnet_lite_pytorch that pads
    as much before as after (a ZeroPad2d copy of its input, then an unpadded conv); None for
    any other module."""
    pad = getattr(conv, "static_padding", None)
    if not (isinstance(conv, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d)
            and type(conv).__module__.startswith("efficientnet_lite_pytorch.")
            and tuple(conv.padding) == (0, 0)):
        return None
    left, right, top, bottom = pad.padding
    return (top, left) if (left, top) == (right, bottom) else None


def unpad_convs(root: nn.Module) -> int:
    """Replace each conv :func:`_symmetric_padding` finds by an ``nn.Conv2d`` padding inside the
    convolution: the same output without the padded copy of the input, which for a depthwise
    conv is the block's widest tensor. Stride-2 convs on even sides pad one pixel more after
    than before, which a conv cannot, and stay as they are."""
    replaced = 0
    for name, conv in list(root.named_modules()):
        padding = _symmetric_padding(conv)
        if padding is None:
            continue
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          padding, conv.dilation, conv.groups, bias=conv.bias is not None)
        plain.weight, plain.bias = conv.weight, conv.bias
        _replace(root, name, plain)
        replaced += 1
    return replaced


@dataclass
class FoldReport:
    folded: int  # conv->norm pairs folded
    norms: int  # batch norms in the trunk
    inplace: int  # activations switched to in place
    traced: bool  # pairs found on the fx graph (else: the nn.Sequential fallback)
    unpadded: int = 0  # 'same'-padding convs now padding inside the convolution


def fold_trunk(model: FeatureClassifier, *, unpad: bool = True) -> tuple[nn.Module, FoldReport]:
    """An eval-mode deep copy of ``model``'s feature pass with its norms folded (and, with
    ``unpad``, its symmetric 'same' paddings moved into the convolutions); its ``forward(x)`` is
    ``model.forward_features(x)``."""
    root = _Features(copy.deepcopy(model)).eval()
    for param in root.parameters():
        param.requires_grad_(False)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in root.modules())
    try:
        graph: torch.fx.Graph | None = _LeafTracer().trace(root)
    except Exception as err:  # fx raises many kinds on untraceable Python: fall back
        log.info("trunk does not trace with torch.fx (%s); folding nn.Sequential pairs only",
                 type(err).__name__)
        graph = None
    pairs = fx_pairs(root, graph) if graph is not None else sequential_pairs(root)
    inplace = _inplace_activations(root, graph) if graph is not None else 0
    folded = sum(fold(root, pair) for pair in pairs)
    unpadded = unpad_convs(root) if unpad else 0
    return root, FoldReport(folded, norms, inplace, graph is not None, unpadded)


def _close(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and float((x.float() - y.float()).abs().max())
        <= rtol * max(float(y.float().abs().max()), 1e-6) for x, y in zip(a, b, strict=True))


def should_compile(eager_seconds_per_image: float, n_images: int) -> bool:
    """``compile="auto"``: compiling pays when it saves more pass time than it costs."""
    saved = n_images * eager_seconds_per_image * (1 - 1 / COMPILE_SPEEDUP)
    return saved > COMPILE_SECONDS


class FrozenTrunk:
    """``forward_features`` of a folded copy of a trunk, for inference only.

    ``precision``: ``fp32`` or ``bf16`` (autocast). ``compile``: ``on`` (inductor), ``off``, or
    ``auto``: decided on the first batch from its eager time and ``n_images``, the run's size.
    ``unpad``: see :func:`fold_trunk` (off only to measure what it buys).
    Compiled, a shorter batch is zero-padded to ``batch_size`` (the largest the caller passes;
    0: the first batch's size), the first batch included, since every image is computed
    independently in eval mode: inductor compiles one shape, also where the first split is
    smaller than one batch.
    """

    def __init__(self, model: FeatureClassifier, *, precision: str = "fp32",
                 compile: str = "off", n_images: int = 0, device: torch.device | None = None,
                 check: bool = True, unpad: bool = True, batch_size: int = 0) -> None:
        if compile not in COMPILE_MODES:
            raise FrozenTrunkError(f"compile must be one of {', '.join(COMPILE_MODES)}, got "
                                   f"{compile!r}")
        self.original = model
        self.device = device or next(model.parameters()).device
        self.module, self.report = fold_trunk(model, unpad=unpad)
        self.module.to(self.device, memory_format=torch.channels_last)
        self.precision = precision
        self.compile = compile
        self.n_images = n_images
        self.check = check
        self.compiled = False
        self._fn: Callable[[torch.Tensor], list[torch.Tensor]] | None = None
        self._batch = batch_size

    def _eager(self, x: torch.Tensor) -> list[torch.Tensor]:
        with autocast(self.device, self.precision):
            return self.module(x)

    def _verify(self, x: torch.Tensor) -> None:
        """The folded copy must match the original on (a slice of) the first batch; a trunk
        whose folding broke it falls back to the unfolded copy."""
        probe = x[:2].float()
        was_training = self.original.training
        self.original.eval()
        try:
            want = self.original.forward_features(probe)
        finally:
            self.original.train(was_training)
        if not _close(self.module(probe), want, FOLD_RTOL):
            log.warning("folding batch norms changed this trunk's features; running it "
                        "unfolded")
            self.module = _Features(copy.deepcopy(self.original)).eval().to(
                self.device, memory_format=torch.channels_last)
            self.report.folded = 0

    def _first_call(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.check:
            self._verify(x)
        self._fn = self._eager
        if self.compile == "off":
            return self._eager(x)
        if self.compile == "auto":
            start = time.perf_counter()
            out = self._eager(x)
            per_image = (time.perf_counter() - start) / len(x)
            if not should_compile(per_image, self.n_images - len(x)):
                return out
        self._fn = torch.compile(self._eager, dynamic=False)
        self.compiled = True
        self._batch = max(self._batch, len(x))
        # Freezing lets inductor treat the weights as constants: it prepacks them for oneDNN
        # and fuses each conv with the activation after it. It applies when the graph
        # compiles, on this first call.
        from torch._inductor import config as inductor_config  # here: a slow import

        with inductor_config.patch(freezing=True):
            return self._compiled(x)

    def _compiled(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The compiled pass on ``x`` zero-padded to the compiled batch size (a larger batch than
        the caller announced compiles its own shape)."""
        assert self._fn is not None
        n = len(x)
        if n >= self._batch:
            return self._fn(x)
        pad = x.new_zeros((self._batch - n, *x.shape[1:])).contiguous(
            memory_format=torch.channels_last)
        return [f[:n] for f in self._fn(torch.cat([x, pad]))]

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        if self._fn is None:
            return self._first_call(x)
        return self._compiled(x) if self.compiled else self._fn(x)
