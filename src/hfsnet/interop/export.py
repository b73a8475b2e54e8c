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
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hfsnet.errors import HfsnetError
from hfsnet.fsutil import atomic_write_bytes

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


def export_model(model: nn.Module, meta: dict[str, Any], out: str | Path, *,
                 fmt: str = "onnx", input_kind: str = "uint8") -> dict[str, Any]:
    """Write ``model`` (trained with checkpoint metadata ``meta``) to ``out`` atomically.

    Returns the metadata stored in the file.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {FORMATS}, got {fmt!r}")
    info = export_info(meta, input_kind)
    wrapper = Preprocessed(model, meta["mean"], meta["std"], input_kind).cpu().eval()
    example = example_images(info)
    with torch.no_grad():
        writer = _onnx_bytes if fmt == "onnx" else _torchscript_bytes
        payload = writer(wrapper, example, info)
    atomic_write_bytes(Path(out), payload)
    return info
