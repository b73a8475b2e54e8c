"""Export a trained classifier, normalisation included, as ONNX or TorchScript.

The exported graph takes images exactly as decoded: ``images`` N x C x H x W, uint8 in
[0, 255] (``input="uint8"``, the default) or float32 in [0, 1] (``input="float"``), at the
training size, any batch size N; it returns ``logits`` N x num_classes (float32, softmax not
applied). Class names, mean/std and the input convention travel inside the file: ONNX metadata
key ``hfsnet``, TorchScript extra file ``hfsnet.json``, both JSON.

Both formats trace the model (the legacy TorchScript-based ONNX exporter, not torch.export):
tracing runs the model eagerly, so networks shared through forward hooks and with Python
control flow export; the graph keeps the branches the example batch took.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hfsnet.errors import HfsnetError
from hfsnet.fsutil import atomic_write_bytes
from hfsnet.train.rundir import LOCK_NAME, RUN_FILES, STEP_DIR, TENSORBOARD_DIR, run_files

FORMATS = ("onnx", "torchscript")
INPUT_KINDS = ("uint8", "float")
EXAMPLE_BATCH = 2  # a batch of 1 could let the tracer specialise the batch axis away
METADATA_KEY = "hfsnet"


class ExportError(HfsnetError):
    """An export that cannot be done; the message names the flag or package."""


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


def _torchscript_bytes(wrapper: nn.Module, example: torch.Tensor, info: dict[str, Any]) -> bytes:
    traced = torch.jit.trace(wrapper, example)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": json.dumps(info)})
    return buffer.getvalue()


def _onnx_bytes(wrapper: nn.Module, example: torch.Tensor, info: dict[str, Any]) -> bytes:
    try:
        import onnx
    except ImportError:
        raise ExportError("--format onnx needs the onnx package; install it with "
                          "`pip install 'hfsnet[onnx]'`") from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (see the module docstring).
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message=".*legacy TorchScript-based ONNX export")
        torch.onnx.export(wrapper, (example,), buffer, dynamo=False, input_names=["images"],
                          output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
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
