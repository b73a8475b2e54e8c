"""Export a trained classifier, normalisation included, as ONNX or TorchScript.

The exported graph takes images exactly as decoded: ``images`` N x C x H x W, uint8 in
[0, 255] (``input="uint8"``, the default) or float32 in [0, 1] (``input="float"``), at the
training size, any batch size N; it returns ``logits`` N x num_classes (float32, softmax not
applied). Class names, mean/std and the input convention travel inside the file: ONNX metadata
key ``hfsnet``, TorchScript extra file ``hfsnet.json``, both JSON.

ONNX goes through torch's current exporter: ``torch.export`` captures the graph with a symbolic
batch axis, then ``torch.onnx`` translates it (with the onnxscript package). The capture runs
the model's Python eagerly (non-strict mode), so every registered family exports, antialiased
resizing included. It cannot capture everything a user network's forward may do (branch on a
tensor value, as in ``if x.amin() < 0``; leave a submodule by raising an exception): a user
network that it cannot capture is exported by the legacy TorchScript-based ONNX exporter
instead, and a :class:`LegacyExportWarning` says so, because that tracer keeps only the branches
the example batch took. TorchScript files are traced (``torch.jit.trace``) with the same caveat.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hfsnet.errors import HfsnetError
from hfsnet.fsutil import atomic_write_bytes
from hfsnet.models.share import SharedClassifier
from hfsnet.train.rundir import LOCK_NAME, RUN_FILES, STEP_DIR, TENSORBOARD_DIR, run_files

FORMATS = ("onnx", "torchscript")
INPUT_KINDS = ("uint8", "float")
EXAMPLE_BATCH = 2  # tracers and torch.export specialise a batch of 1 into a constant
METADATA_KEY = "hfsnet"
# Loggers whose warnings are about the exporter's own internals (torchvision ops it skips
# registering, constant folding it skips, the symbols of a capture that fails and falls back),
# nothing a user of the exported file can act on.
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "torch.fx.experimental.symbolic_shapes")
# torch.export deep-copies pytree specs through typing_extensions, which trips torch's own
# deprecation of `isinstance(treespec, LeafSpec)`: torch's internals, not hfsnet's call.
TORCH_INTERNAL_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class ExportError(HfsnetError):
    """An export that cannot be done; the message names the flag or package."""


class LegacyExportWarning(UserWarning):
    """A user network written by the legacy TorchScript-based ONNX exporter because
    ``torch.export`` cannot capture its forward."""


class Preprocessed(nn.Module):
    """``model`` behind the training normalisation ``(x / 255 - mean) / std``, folded into one
    affine map per channel (computed in float64, like ``hfsnet.data.normalize``)."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float],
                 input_kind: str = "uint8") -> None:
        super().__init__()
        if input_kind not in INPUT_KINDS:
            raise ExportError(f"--input must be one of {INPUT_KINDS}, got {input_kind!r}")
        self.model = model
        pixel_max = 255 if input_kind == "uint8" else 1
        mean64 = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
        std64 = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        self.register_buffer("scale", (1 / (pixel_max * std64)).float())
        self.register_buffer("shift", (-mean64 / std64).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.float() * self.scale + self.shift)


def export_info(meta: dict[str, Any], input_kind: str) -> dict[str, Any]:
    """What a consumer of the exported file needs to feed it and read its output."""
    return {"input": input_kind, "input_layout": "NCHW",
            "input_shape": [meta["in_channels"], *meta["image_size"]],
            "classes": meta["classes"], "output": "logits", "mean": meta["mean"],
            "std": meta["std"], "model": meta["model"]}


def example_images(info: dict[str, Any]) -> torch.Tensor:
    """A deterministic batch in the exported input convention."""
    generator = torch.Generator().manual_seed(0)
    shape = (EXAMPLE_BATCH, *info["input_shape"])
    if info["input"] == "uint8":
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return torch.rand(shape, generator=generator)


def _torchscript_bytes(wrapper: Preprocessed, example: torch.Tensor,
                       info: dict[str, Any]) -> bytes:
    traced = torch.jit.trace(wrapper, example)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": json.dumps(info)})
    return buffer.getvalue()


def _require(package: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ExportError(f"--format onnx needs the {package} package; install it with "
                          "`pip install 'hfsnet[onnx]'`") from None


@contextlib.contextmanager
def _exporter_quiet() -> Iterator[None]:
    """Hide the exporter's internal chatter (see ``EXPORTER_LOGGERS``); errors still show."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", TORCH_INTERNAL_WARNING, FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _capture(wrapper: Preprocessed, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The wrapper's graph, its batch axis symbolic. Non-strict mode runs the Python of
    forward (and forward hooks) as written instead of compiling it with TorchDynamo."""
    batch = torch.export.Dim("batch")
    return torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}},
                               strict=False)


def _translate(program: torch.export.ExportedProgram) -> Any:
    """``program`` as an ONNX ModelProto. verbose=False keeps the exporter's progress lines off
    stdout (``--json`` prints one line there); with no file and report=False it writes none."""
    onnx_program = torch.onnx.export(program, dynamo=True, input_names=["images"],
                                     output_names=["logits"], verbose=False, report=False)
    return onnx_program.model_proto


def _legacy_proto(wrapper: Preprocessed, example: torch.Tensor) -> Any:
    """The ModelProto of the legacy exporter, which traces ``wrapper`` on ``example``."""
    onnx = _require("onnx")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Chosen on purpose for a network torch.export cannot capture, and LegacyExportWarning
        # has said so: its deprecation (raised at this call) and its internals' are no news.
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(wrapper, (example,), buffer, dynamo=False, input_names=["images"],
                          output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def _user_network_proto(wrapper: Preprocessed, example: torch.Tensor) -> Any:
    """A user network's ModelProto: torch.export's if it can capture the network, else the
    legacy tracer's. Only user networks fall back: their forward is the user's code, while a
    registered family that torch.export cannot capture is a bug that must show, not hide."""
    try:
        # A failed capture prints its partial graph to stderr; the warning below replaces it.
        with contextlib.redirect_stderr(io.StringIO()):
            program = _capture(wrapper, example)
    except Exception as err:  # whatever torch.export raises, the tracer may still work
        reason = next(iter(str(err).strip().splitlines()), "")
        warnings.warn(f"torch.export cannot capture {type(wrapper.model.backbone).__name__} "
                      f"({type(err).__name__}: {reason[:200]}); exported it with the legacy "
                      "TorchScript-based ONNX exporter, which keeps only the branches of "
                      "forward that the example batch took", LegacyExportWarning, stacklevel=2)
        return _legacy_proto(wrapper, example)
    return _translate(program)


def _onnx_bytes(wrapper: Preprocessed, example: torch.Tensor, info: dict[str, Any]) -> bytes:
    onnx = _require("onnx")
    _require("onnxscript")  # torch.onnx translates with it; a clear message beats its ImportError
    with _exporter_quiet():
        if isinstance(wrapper.model, SharedClassifier):
            proto = _user_network_proto(wrapper, example)
        else:
            proto = _translate(_capture(wrapper, example))
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(info)})
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def check_target(out: str | Path, source: str | Path | None = None) -> None:
    """Refuse to export over the checkpoint ``source`` being exported (however ``out`` reaches
    it: a link, a relative path) or over any file that a run directory owns (its checkpoints,
    config, metrics, results, run id, lock, TensorBoard logs): either would destroy the run."""
    target = Path(out).resolve()
    if source is not None and target.exists() and os.path.samefile(target, source):
        raise ExportError(f"--out {out}: that is the checkpoint being exported ({source}); "
                          "write the export to another file")
    run_dir = owning_run(target)
    if run_dir is not None:
        raise ExportError(f"--out {out}: {target.name} belongs to the run in {run_dir}; write "
                          "the export under another name (e.g. model.onnx beside it)")


def owning_run(path: Path) -> Path | None:
    """The run directory whose own file ``path`` (resolved) would be, or None."""
    if path.name in (*RUN_FILES, LOCK_NAME) and run_files(path.parent):
        return path.parent
    for folder in path.parents:  # checkpoints/ and tensorboard/ hold nothing but the run's
        if folder.name in (STEP_DIR, TENSORBOARD_DIR) and run_files(folder.parent):
            return folder.parent
    return None


def export_model(model: nn.Module, meta: dict[str, Any], out: str | Path, *,
                 fmt: str = "onnx", input_kind: str = "uint8",
                 source: str | Path | None = None) -> dict[str, Any]:
    """Write ``model`` (trained with checkpoint metadata ``meta``, read from the checkpoint file
    ``source`` when given) to ``out`` atomically; ``out`` is refused by :func:`check_target`.

    Returns the metadata stored in the file.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {FORMATS}, got {fmt!r}")
    check_target(out, source)
    info = export_info(meta, input_kind)
    wrapper = Preprocessed(model, meta["mean"], meta["std"], input_kind).cpu().eval()
    example = example_images(info)
    with torch.no_grad():
        writer = _onnx_bytes if fmt == "onnx" else _torchscript_bytes
        payload = writer(wrapper, example, info)
    atomic_write_bytes(Path(out), payload)
    return info
