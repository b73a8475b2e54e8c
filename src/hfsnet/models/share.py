"""Feature sharing for any PyTorch network: tap named layers, pool, fuse, project, classify.

Taps are forward hooks, not ``torch.fx``: symbolic tracing fails on networks whose ``forward``
branches on tensor values (an ``if x.mean() > 0``), while a hook sees whatever branch ran. Once
the deepest tap has fired, the hook stops the backbone's forward (the network's own classifier
and anything else after the taps never runs), and the parameters of what runs only after it are
frozen: they can never get a gradient, and DistributedDataParallel requires every trainable
parameter to get one.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hfsnet.errors import HfsnetError
from hfsnet.models.base import FeatureClassifier
from hfsnet.models.head import LevelHead, fused_levels

FUSES = ("concat", "last")
POOLS = {"gap": "gap", "gmp": "max"}  # share()'s names -> the head's
DRY_RUN_BATCH = 2  # images in the dry forward pass that finds layer shapes


class ShareError(HfsnetError):
    """A layer that cannot be tapped, or share options out of range."""


class _StopForward(Exception):
    """Raised by the deepest tap's hook to skip the rest of the backbone."""


Hook = Callable[[nn.Module, object, object], None]
PreHook = Callable[[nn.Module, object], None]


@dataclass(frozen=True)
class _Call:
    """One module call seen in a dry run: its output, the output's in-place version counter at
    the time, and how many module calls had started by then."""

    name: str
    output: torch.Tensor
    version: int
    started: int


@dataclass
class _DryRun:
    calls: list[_Call]  # completed calls with a tensor output, in completion order
    starts: list[str]  # every module call (the root is ""), in start order


@contextlib.contextmanager
def _hooks(backbone: nn.Module, hooks: Mapping[str, Hook],
           pre_hooks: Mapping[str, PreHook] | None = None) -> Iterator[None]:
    """Forward (and forward-pre) hooks on the named submodules for the duration of the block.

    Hooks live only as long as one forward pass, so copies of the model (``copy.deepcopy``)
    never share a hook that writes into the original.
    """
    modules = dict(backbone.named_modules())
    handles = [modules[name].register_forward_hook(hook) for name, hook in hooks.items()]
    handles += [modules[name].register_forward_pre_hook(hook)
                for name, hook in (pre_hooks or {}).items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _as_map(output: torch.Tensor) -> torch.Tensor:
    """A tap's output as N x C x H x W: vectors (N x C) become 1x1 maps."""
    return output[:, :, None, None] if output.dim() == 2 else output


def _dry_input(backbone: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.randn(DRY_RUN_BATCH, *input_shape, generator=generator).to(device)


def _dry_run(backbone: nn.Module, input_shape: Sequence[int]) -> _DryRun:
    """Every module call of a forward pass of ``input_shape`` (C, H, W) images, in order.

    Runs in eval mode without gradients, so BatchNorm running statistics stay untouched.
    """
    run = _DryRun([], [])

    def record(name: str) -> Hook:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                run.calls.append(_Call(name, output, output._version, len(run.starts)))
        return hook

    def start(name: str) -> PreHook:
        return lambda _module, _inputs: run.starts.append(name)

    names = [name for name, _ in backbone.named_modules()]
    was_training = backbone.training
    backbone.eval()
    try:
        with _hooks(backbone, {n: record(n) for n in names if n}, {n: start(n) for n in names}):
            with torch.no_grad():
                backbone(_dry_input(backbone, input_shape))
    finally:
        backbone.train(was_training)
    return run


def _freeze_after(backbone: nn.Module, starts: Sequence[str], boundary: int) -> list[str]:
    """Freeze the parameters used only by modules that first start after the first
    ``boundary`` module calls; returns their names."""
    first: dict[str, int] = {}
    for i, name in enumerate(starts):
        first.setdefault(name, i)
    live: set[int] = set()
    late: dict[int, tuple[str, nn.Parameter]] = {}
    for name, module in backbone.named_modules():
        # A module the dry run never called may run on other inputs (another branch).
        module_is_live = name not in first or first[name] < boundary
        for pname, param in module.named_parameters(recurse=False):
            if module_is_live:
                live.add(id(param))
            else:
                late[id(param)] = (f"{name}.{pname}" if name else pname, param)
    frozen = [(name, param) for pid, (name, param) in late.items() if pid not in live]
    for _, param in frozen:
        param.requires_grad_(False)
    return [name for name, _ in frozen]


def _shapes(calls: Sequence[_Call]) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of every call that yields a map or a vector, in call order;
    a module called more than once keeps its last call's place and shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for call in calls:
        if call.output.dim() in (2, 4) and call.output.shape[0] == DRY_RUN_BATCH:
            shapes.pop(call.name, None)
            shapes[call.name] = tuple(call.output.shape[1:])
    return shapes


def tappable_layers(backbone: nn.Module,
                    input_shape: Sequence[int] = (3, 32, 32)) -> dict[str, tuple[int, ...]]:
    """Every submodule whose output is a feature map (N x C x H x W) or a vector (N x C).

    Maps each name to its output shape without the batch dimension, in the order the outputs
    appear in a forward pass of ``input_shape`` (C, H, W) images.
    """
    return _shapes(_dry_run(backbone, input_shape).calls)


def _check_names(backbone: nn.Module, layers: Sequence[str], calls: Sequence[_Call],
                 input_shape: Sequence[int]) -> None:
    shapes = _shapes(calls)
    if not layers:
        raise ShareError("--share-layers: no layers given; list the tappable ones with "
                         "`hfsnet layers MODEL`")
    if len(set(layers)) != len(layers):
        raise ShareError(f"--share-layers: layers repeat: {list(layers)}")
    modules = dict(backbone.named_modules())
    outputs = {call.name: call.output for call in calls}
    size = "x".join(map(str, input_shape))
    for name in layers:
        if name in shapes:
            continue
        if name in outputs:
            raise ShareError(f"--share-layers: layer {name!r} outputs shape "
                             f"{'x'.join(map(str, outputs[name].shape[1:]))} per image; only "
                             "feature maps (C x H x W) and vectors (C) can be tapped")
        if name in modules:
            raise ShareError(f"--share-layers: layer {name!r} did not run in a dry forward pass "
                             f"of {size} images (a branch of forward skipped it, or its output "
                             f"is not a tensor); tappable layers: {', '.join(shapes)}")
        close = difflib.get_close_matches(name, list(shapes), n=3, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ShareError(f"--share-layers: no layer named {name!r} in "
                         f"{type(backbone).__name__}.{hint} See `hfsnet layers MODEL` for all "
                         f"{len(shapes)} tappable layers.")


def shared_head(level_channels: Sequence[int], num_classes: int, *, fuse: str = "concat",
                pool: str = "gap", proj: int = 256, dropout: float = 0.0) -> LevelHead:
    """Pool every tap, concatenate (or take the last), phi, classifier.

    phi is a Linear+ReLU on the concatenated pooled taps (the head's hidden layer) rather than a
    1x1 conv per tap before pooling: average pooling commutes with a linear 1x1 conv, so that conv
    would equal a block-diagonal Linear on the pooled vector; the full Linear also mixes levels,
    costs no per-pixel compute, and makes the head a function of pooled features alone, so
    cached pooled features can train all of it.
    """
    if fuse not in FUSES:
        raise ShareError(f"fuse must be one of {FUSES}, got {fuse!r}")
    if pool not in POOLS:
        raise ShareError(f"pool must be one of {tuple(POOLS)}, got {pool!r}")
    if proj < 0:
        raise ShareError(f"proj (phi's width) must be >= 0, got {proj}")
    levels = fused_levels(len(level_channels), fuse == "concat")
    return LevelHead(level_channels, levels, POOLS[pool], num_classes, proj, dropout=dropout)


class _DirectTensors(nn.Module):
    """The parameters and buffers ``module`` holds itself, not through a child: how a stage
    lists them when the module's children belong to other stages."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        for name, param in module.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in module.named_buffers(recurse=False):
            self.register_buffer(name, buffer)


def _stage_members(backbone: nn.Module, starts: Sequence[str], boundaries: Sequence[int],
                   frozen: set[int]) -> list[list[str]]:
    """Names of the modules of each stage: every leaf module and every module that holds
    tensors itself, in the stage of the first tap to complete after the module first started.

    A module the dry run never called goes to the last stage (it may run on other inputs);
    one that first starts after the deepest tap is left out unless it holds a parameter that
    is not frozen.
    """
    first: dict[str, int] = {}
    for i, name in enumerate(starts):
        first.setdefault(name, i)
    members: list[list[str]] = [[] for _ in boundaries]
    for name, module in backbone.named_modules():
        own = list(module.parameters(recurse=False))
        is_leaf = next(module.children(), None) is None
        if not is_leaf and not own and not list(module.buffers(recurse=False)):
            continue
        start = first.get(name)
        stage = next((i for i, end in enumerate(boundaries) if start is not None and start < end),
                     None)
        if stage is None:
            if start is not None and all(id(p) in frozen for p in own):
                continue
            stage = len(boundaries) - 1
        members[stage].append(name)
    return members


class SharedClassifier(FeatureClassifier):
    """Any ``nn.Module`` as a multi-level feature-sharing classifier.

    ``forward_features`` returns the tapped layers' outputs, shallowest (first to be computed)
    first; ``stage_names`` are the layer names in that order. ``frozen`` names the backbone
    parameters that only layers after the deepest tap use, now ``requires_grad=False``.
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[str], *, num_classes: int = 10,
                 input_shape: Sequence[int] = (3, 32, 32), fuse: str = "concat",
                 pool: str = "gap", proj: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        dry = _dry_run(backbone, input_shape)
        calls = dry.calls
        _check_names(backbone, layers, calls, input_shape)
        shapes = _shapes(calls)
        order = list(shapes)
        self.layers = sorted(layers, key=order.index)
        self._channels = [shapes[name][0] for name in self.layers]
        tapped = [call for call in calls if call.name in self.layers]
        # A tap that a later op modifies in place (ReLU(inplace=True), `out += identity`) must
        # be copied when it fires, or the head would read the modified values.
        self._copy = {call.name for call in tapped if call.output._version != call.version}
        # Stopping early is safe only if the deepest tap fires once per forward, last of all.
        last = self.layers[-1]
        once = sum(call.name == last for call in tapped) == 1
        self._stop_at = last if once and tapped[-1].name == last else None
        self.frozen = _freeze_after(backbone, dry.starts, tapped[-1].started)
        frozen = set(self.frozen)
        frozen_ids = {id(p) for n, p in backbone.named_parameters(remove_duplicate=False)
                      if n in frozen}
        ends = [max(c.started for c in tapped if c.name == name) for name in self.layers]
        self._stage_members = _stage_members(backbone, dry.starts, ends, frozen_ids)
        self.head = shared_head(self._channels, num_classes, fuse=fuse, pool=pool, proj=proj,
                                dropout=dropout)

    def _hook_for(self, name: str, taps: dict[str, torch.Tensor]) -> Hook:
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            taps[name] = output.clone() if name in self._copy else output
            # torch.export cannot trace a forward left through an exception: while exporting,
            # the backbone runs to its end and the unused rest is dropped from the graph.
            if name == self._stop_at and not torch.compiler.is_exporting():
                raise _StopForward
        return hook

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps: dict[str, torch.Tensor] = {}
        with _hooks(self.backbone, {n: self._hook_for(n, taps) for n in self.layers}):
            try:
                self.backbone(x)
            except _StopForward:
                pass
        missing = [name for name in self.layers if name not in taps]
        if missing:
            raise ShareError(f"tapped layers {missing} did not run in this forward pass (a "
                             "branch of the network's forward skipped them); tap layers that "
                             "every input passes through")
        return [_as_map(taps[name]) for name in self.layers]

    def stage_channels(self) -> list[int]:
        return list(self._channels)

    def stage_names(self) -> list[str]:
        return list(self.layers)

    def stage_modules(self) -> list[list[nn.Module]]:
        """The backbone's modules per tap; the parameters frozen at sharing time are in none."""
        modules = dict(self.backbone.named_modules())

        def unit(name: str) -> nn.Module:
            module = modules[name]
            return module if next(module.children(), None) is None else _DirectTensors(module)

        return [[unit(name) for name in names] for names in self._stage_members]


def share(model: nn.Module, layers: Sequence[str], *, fuse: str = "concat", pool: str = "gap",
          num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), proj: int = 256,
          dropout: float = 0.0) -> SharedClassifier:
    """Turn ``model`` into a classifier that fuses the outputs of its ``layers``.

    ``layers`` are names from ``model.named_modules()`` (see :func:`tappable_layers`); each
    output is pooled (``pool``: "gap" average, "gmp" max), the pooled vectors are concatenated
    (``fuse``: "concat"; "last" reads the deepest tap only, an ablation), projected by phi (a
    ``proj``-wide Linear+ReLU; 0 for none) and classified into ``num_classes``.
    ``input_shape`` (C, H, W) is the image size for the dry forward pass that finds each tap's
    channels. The model keeps its weights; nothing after the deepest tap runs.
    """
    return SharedClassifier(model, layers, num_classes=num_classes, input_shape=input_shape,
                            fuse=fuse, pool=pool, proj=proj, dropout=dropout)
