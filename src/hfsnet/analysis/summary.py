"""Per-layer accounting of a model: parameters, MACs and FLOPs, activation memory for backward.

One training-mode forward pass at batch B is traced three ways at once: forward hooks record
each module's output shape, ``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of
every module (it counts matrix products and convolutions, 2 FLOPs per multiply-accumulate, so
MACs = FLOPs / 2), and a saved-tensors hook sees every tensor autograd keeps for backward and
charges its storage, once, to the innermost module running when it was saved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hfsnet.errors import HfsnetError
from hfsnet.train.config import IMAGE_SIZES
from hfsnet.train.runtime import autocast

# Input elements a summary traces at once (batch x C x H x W; 400 MB of fp32): an RGB image about
# 5,800 px square, far beyond any model here. Checked before a tensor is allocated, so an absurd
# --input is one line instead of an allocator failure or the machine swapping.
MAX_INPUT_ELEMENTS = 100_000_000


class SummaryError(HfsnetError):
    """A summary request that cannot be met; the message names the flag."""


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``CxHxW`` (e.g. ``3x32x32``) as three positive ints, with H and W in the range
    ``--image-size`` accepts and at most ``MAX_INPUT_ELEMENTS`` elements in all."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SummaryError(f"--input: expected CxHxW with positive sizes like 3x32x32, "
                           f"got {text!r}")
    c, h, w = (int(p) for p in parts)
    check_input_elements((c, h, w), 1, f"--input {text!r}")
    if h not in IMAGE_SIZES or w not in IMAGE_SIZES:
        raise SummaryError(f"--input: height and width must be {IMAGE_SIZES} (as for "
                           f"--image-size), got {text!r}")
    return c, h, w


def check_input_elements(shape: tuple[int, int, int], batch_size: int, what: str) -> None:
    """Refuse a batch of ``batch_size`` x ``shape`` above ``MAX_INPUT_ELEMENTS``, naming the
    count; ``what`` names the flags it came from."""
    elements = batch_size * shape[0] * shape[1] * shape[2]
    if elements > MAX_INPUT_ELEMENTS:
        raise SummaryError(f"{what}: {elements:,} input elements, expected at most "
                           f"{MAX_INPUT_ELEMENTS:,}")


@dataclass
class LayerRow:
    """One module; every number covers the module and everything nested in it."""

    name: str
    type: str
    depth: int  # 1 for the model's direct children
    output_shape: str
    params: int
    macs: int  # multiply-accumulates per image
    activation_bytes: int  # storage of tensors kept for backward, whole batch

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flops": self.flops}


@dataclass
class Totals:
    trainable_params: int
    frozen_params: int
    buffer_elements: int  # running statistics of norms (Keras counts them as non-trainable)
    macs: int  # per image
    param_bytes: int
    buffer_bytes: int
    activation_bytes: int  # whole batch, tensors kept for backward
    weight_copy_bytes: int  # low-precision weight copies autocast keeps for backward

    @property
    def params(self) -> int:
        return self.trainable_params + self.frozen_params

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "params": self.params, "flops": self.flops}


@dataclass
class ModelSummary:
    model: str
    options: dict[str, Any]
    input_shape: tuple[int, int, int]
    batch_size: int
    precision: str
    rows: list[LayerRow]
    totals: Totals
    peak_memory: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "options": self.options,
                "input_shape": list(self.input_shape), "batch_size": self.batch_size,
                "precision": self.precision, "rows": [r.to_dict() for r in self.rows],
                "totals": self.totals.to_dict(), "peak_memory": self.peak_memory}


def _shape_text(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return "x".join(str(s) for s in output.shape)
    if isinstance(output, (list, tuple)):
        return "[" + ", ".join(_shape_text(o) for o in output) + "]"
    return "-"


class _Trace:
    """Hooks that record, per module name, output shapes and bytes saved for backward."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack = [""]
        self.shapes: dict[str, str] = {}
        self.saved_bytes: dict[str, int] = {}
        self.weight_copy_bytes = 0
        self._seen_storages: set[int] = set()
        self._param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._params_only: dict[Any, bool] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        handles = []
        for name, module in self.model.named_modules():
            handles.append(module.register_forward_pre_hook(self._enter(name)))
            handles.append(module.register_forward_hook(self._leave(name), always_call=True))
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield
        finally:
            for handle in handles:
                handle.remove()

    def _enter(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any) -> None:
            self.stack.append(name)
        return hook

    def _leave(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.stack.pop()
            self.shapes[name] = _shape_text(output)
        return hook

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        # Parameters are accounted as parameters; a storage saved by several ops is held once.
        if key in self._param_storages or key in self._seen_storages:
            return tensor
        self._seen_storages.add(key)
        if tensor.grad_fn is not None and self._from_params_only(tensor.grad_fn):
            self.weight_copy_bytes += storage.nbytes()
        else:
            owner = self.stack[-1]
            self.saved_bytes[owner] = self.saved_bytes.get(owner, 0) + storage.nbytes()
        return tensor

    def _from_params_only(self, node: Any) -> bool:
        """Whether an autograd node computes from parameters alone (a cast or view of weights).

        A ``None`` input is a tensor without history: the batch or a constant. Memoised, so the
        walk over the graph stays linear in its size.
        """
        if node not in self._params_only:
            if type(node).__name__ == "AccumulateGrad":
                self._params_only[node] = True
            else:
                inputs = [nxt for nxt, _ in node.next_functions]
                self._params_only[node] = bool(inputs) and all(
                    nxt is not None and self._from_params_only(nxt) for nxt in inputs)
        return self._params_only[node]


def _flops_by_module(counter: FlopCounterMode, model: nn.Module) -> dict[str, int]:
    """FLOPs per module name (as ``named_modules`` spells it; the model itself is "")."""
    # The counter names modules "<ModelClass>.<attribute path>".
    prefix = type(model).__name__
    flops = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == prefix:
            flops[""] = sum(per_op.values())
        elif key.startswith(prefix + "."):
            flops[key[len(prefix) + 1:]] = sum(per_op.values())
    return flops


def _module_flops(module: nn.Module, name: str, flops: dict[str, int]) -> int:
    """The counter's FLOPs for a module that ran; for a container that never runs itself
    (a ModuleList), the sum over its children."""
    if name in flops or not any(True for _ in module.children()):
        return flops.get(name, 0)
    return sum(_module_flops(child, f"{name}.{child_name}", flops)
               for child_name, child in module.named_children())


def _subtree_sum(values: dict[str, int], name: str) -> int:
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "."))


def _totals(model: nn.Module, trace: _Trace, flops: dict[str, int], batch_size: int) -> Totals:
    params = list(model.parameters())
    buffers = list(model.buffers())
    return Totals(
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        frozen_params=sum(p.numel() for p in params if not p.requires_grad),
        buffer_elements=sum(b.numel() for b in buffers),
        macs=flops.get("", 0) // (2 * batch_size),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        buffer_bytes=sum(b.numel() * b.element_size() for b in buffers),
        activation_bytes=sum(trace.saved_bytes.values()),
        weight_copy_bytes=trace.weight_copy_bytes,
    )


def summarize(model: nn.Module, input_shape: tuple[int, int, int], *, batch_size: int = 1,
              precision: str = "fp32") -> ModelSummary:
    """Trace one training-mode forward pass of ``model`` (on CPU) at ``batch_size``.

    ``precision`` "bf16" runs under autocast, so activation bytes are those of bf16 training.
    The model's weights are unchanged, but norm running statistics see one random batch.
    """
    if batch_size < 1:
        raise SummaryError(f"--batch-size must be >= 1, got {batch_size}")
    check_input_elements(input_shape, batch_size,
                         f"--input {'x'.join(map(str, input_shape))} at --batch-size {batch_size}")
    device = next(model.parameters()).device
    x = torch.randn(batch_size, *input_shape, device=device)
    trace = _Trace(model)
    was_training = model.training
    model.train()
    counter = FlopCounterMode(display=False)
    try:
        with trace.active(), counter, autocast(device, precision):
            model(x)
    finally:
        model.train(was_training)
    flops = _flops_by_module(counter, model)
    rows = [
        LayerRow(name=name, type=type(module).__name__, depth=name.count(".") + 1,
                 output_shape=trace.shapes.get(name, "-"),
                 params=sum(p.numel() for p in module.parameters()),
                 macs=_module_flops(module, name, flops) // (2 * batch_size),
                 activation_bytes=_subtree_sum(trace.saved_bytes, name))
        for name, module in model.named_modules() if name
    ]
    return ModelSummary(
        model=getattr(model, "model_name", "") or type(model).__name__,
        options=dict(getattr(model, "model_options", {})), input_shape=input_shape,
        batch_size=batch_size, precision=precision, rows=rows,
        totals=_totals(model, trace, flops, batch_size),
    )
