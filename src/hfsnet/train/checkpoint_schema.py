"""What a checkpoint file may hold, checked before anything in it is used.

A checkpoint is a safetensors file: 8 bytes giving the header's length, a JSON header (each
tensor's dtype, shape and byte offsets, plus ``__metadata__``), then the tensor bytes; hfsnet's
metadata is one JSON string inside ``__metadata__``. A crafted file can make any part absurd, so
each is checked in the order it is read: the header's size, the tensor layout against the file's
size (before a byte of tensor data is read, so a sparse 20 GB file costs nothing), the
metadata's nesting depth (before ``json`` parses it and could recurse), then its fields.

Every check raises :class:`SchemaError`, whose message names the field; the caller adds the file.
Names and values read from the file appear in messages as ``repr`` writes them, which escapes
control characters, so a crafted name cannot forge terminal output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np
import torch

from hfsnet.textutil import printable
from hfsnet.train.config import ConfigError, TrainConfig

MAX_HEADER_BYTES = 100 * 2**20  # 100,000 class names of 1,000 characters fit
MAX_JSON_DEPTH = 32  # what hfsnet writes nests 6 deep (optimizer state)
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 1000  # characters
MAX_CHANNELS = 64
MAX_IMAGE_SIDE = 4096
# Fields save_checkpoint writes itself; the data fields every caller passes (data_meta).
LIBRARY_FIELDS = ("model", "model_options", "num_classes", "sha256")
DATA_FIELDS = ("classes", "in_channels", "image_size")
# Fields a resumable training checkpoint (Trainer.save) holds besides those.
RESUME_FIELDS = ("config", "epoch", "global_step", "tally", "history", "rng", "optimizer",
                 "data_digest")

_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# A JSON string, written so that the regex engine does not backtrack ("unrolled loop").
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_DEPTH_CHUNK = 2**20
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
_OPTIM_TENSOR = re.compile(r"optim\.(\d+)\.(.+)", re.DOTALL)
_SHA256 = re.compile(r"[0-9a-f]{64}")


class SchemaError(ValueError):
    """A part of a checkpoint that does not have the form hfsnet writes."""


# ---------------------------------------------------------------------------------------------
# The safetensors header


def read_header(file: BinaryIO, file_size: int) -> dict[str, Any]:
    """The parsed header of the safetensors file ``file`` of ``file_size`` bytes, after checking
    that its tensors tile the rest of the file exactly."""
    if file_size < 8:
        raise SchemaError(f"{file_size} bytes: too short for a safetensors header")
    length = int.from_bytes(file.read(8), "little")
    if length > MAX_HEADER_BYTES:
        raise SchemaError(f"header of {length:,} bytes: expected at most {MAX_HEADER_BYTES:,}")
    if 8 + length > file_size:
        raise SchemaError(f"header of {length:,} bytes in a file of {file_size:,}: truncated")
    raw = file.read(length)
    header = parse_json(raw, "header")
    if not isinstance(header, dict):
        raise SchemaError(f"header: expected a JSON object, got {type(header).__name__}")
    check_layout(header, file_size - 8 - length)
    return header


def parse_json(raw: bytes, what: str) -> Any:
    """``raw`` parsed as JSON, refused when it nests deeper than MAX_JSON_DEPTH."""
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise SchemaError(f"{what}: JSON nested {depth} deep, expected at most {MAX_JSON_DEPTH}")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise SchemaError(f"{what}: not valid JSON ({err})") from None


def json_depth(raw: bytes) -> int:
    """How deep the arrays and objects of the JSON text ``raw`` nest, brackets inside strings
    not counted; computed without recursion, in chunks, so that 100 MB of ``[`` is cheap."""
    bare = np.frombuffer(_JSON_STRING.sub(b"", raw), np.uint8)
    depth = deepest = 0
    for start in range(0, len(bare), _DEPTH_CHUNK):
        chunk = bare[start : start + _DEPTH_CHUNK]
        steps = np.isin(chunk, _OPEN).astype(np.int64) - np.isin(chunk, _CLOSE)
        running = depth + np.cumsum(steps)
        if len(running):
            deepest = max(deepest, int(running.max()))
            depth = int(running[-1])
    return deepest


def check_layout(header: Mapping[str, Any], data_bytes: int) -> None:
    """Every tensor entry is well formed, its byte span fits its dtype and shape, and the spans
    cover the ``data_bytes`` after the header without gap or overlap (as safetensors requires)."""
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            check_str_mapping(entry, "header field '__metadata__'")
            continue
        spans.append((*_tensor_span(name, entry), name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise SchemaError(f"tensor {name!r}: starts at byte {begin:,}, expected "
                              f"{position:,} (tensors must be contiguous)")
        position = end
    if position != data_bytes:
        raise SchemaError(f"the header describes {position:,} bytes of tensor data, the file "
                          f"holds {data_bytes:,} after its header")


def _tensor_span(name: str, entry: object) -> tuple[int, int]:
    where = f"tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise SchemaError(f"{where}: expected an entry with dtype, shape and data_offsets")
    if entry["dtype"] not in _DTYPE_BYTES:
        raise SchemaError(f"{where}: unknown dtype {str(entry['dtype'])!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not _is_int_list(shape, minimum=0):
        raise SchemaError(f"{where}: shape: expected a list of integers >= 0")
    if not _is_int_list(offsets, minimum=0) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise SchemaError(f"{where}: data_offsets: expected [begin, end] with begin <= end")
    size = math.prod(shape) * _DTYPE_BYTES[entry["dtype"]]
    if offsets[1] - offsets[0] != size:
        raise SchemaError(f"{where}: {entry['dtype']} {shape} takes {size:,} bytes, its "
                          f"offsets span {offsets[1] - offsets[0]:,}")
    return offsets[0], offsets[1]


# ---------------------------------------------------------------------------------------------
# The metadata


def check_meta(meta: object, tensor_names: Sequence[str]) -> None:
    """The hfsnet metadata has every field it needs, of the right type and within bounds;
    ``tensor_names`` (the header's) are checked against the optimizer state it describes."""
    if not isinstance(meta, dict):
        raise SchemaError(f"metadata: expected a JSON object, got {type(meta).__name__}")
    require(meta, (*LIBRARY_FIELDS, *DATA_FIELDS), "every checkpoint")
    _check_model_fields(meta)
    _check_data_fields(meta)
    if "config" in meta:
        check_config(meta["config"])
    for name in ("epoch", "global_step"):
        if name in meta:
            check_int(meta[name], name, 0)
    for name in ("tally", "rng", "head_fit"):
        if name in meta and not isinstance(meta[name], dict):
            raise refuse(name, "a JSON object", meta[name])
    if "history" in meta and not (isinstance(meta["history"], list)
                                  and all(isinstance(row, dict) for row in meta["history"])):
        raise refuse("history", "a list of JSON objects (one per epoch)", meta["history"])
    for name in ("run_id", "data_digest", "data_name"):
        if meta.get(name) is not None and not isinstance(meta[name], str):
            raise refuse(name, "a string", meta[name])
    if "optimizer" in meta:
        check_optimizer_meta(meta["optimizer"], tensor_names)


def require(meta: Mapping[str, Any], names: Sequence[str], purpose: str) -> None:
    missing = [name for name in names if name not in meta]
    if missing:
        raise SchemaError(f"metadata field {missing[0]!r} missing ({purpose} has "
                          f"{', '.join(names)})")


def refuse(name: str, expected: str, value: object) -> SchemaError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return SchemaError(f"metadata field {name!r}: expected {expected}, got {shown}")


def check_int(value: object, name: str, minimum: int, maximum: int | None = None) -> None:
    ok = _is_int(value) and value >= minimum and (maximum is None or value <= maximum)
    if not ok:
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise refuse(name, f"an integer {bound}", value)


def check_str_mapping(value: object, where: str) -> None:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise SchemaError(f"{where}: expected an object of strings")


def _check_model_fields(meta: Mapping[str, Any]) -> None:
    if not isinstance(meta["model"], str) or not 0 < len(meta["model"]) <= 1000:
        raise refuse("model", "a model name", meta["model"])
    if not isinstance(meta["model_options"], dict):
        raise refuse("model_options", "a JSON object of option names to values",
                     meta["model_options"])
    check_int(meta["num_classes"], "num_classes", 1, MAX_CLASSES)
    if not isinstance(meta["sha256"], str) or not _SHA256.fullmatch(meta["sha256"]):
        raise refuse("sha256", "64 hex digits", meta["sha256"])


def _check_data_fields(meta: Mapping[str, Any]) -> None:
    classes = meta["classes"]
    if not (isinstance(classes, list) and 0 < len(classes) <= MAX_CLASSES
            and all(isinstance(c, str) and len(c) <= MAX_CLASS_NAME for c in classes)):
        raise refuse("classes", f"a list of 1 to {MAX_CLASSES:,} names of at most "
                     f"{MAX_CLASS_NAME} characters", classes)
    if len(classes) != meta["num_classes"]:
        raise SchemaError(f"{len(classes)} class names for a head with {meta['num_classes']} "
                          "outputs")
    check_int(meta["in_channels"], "in_channels", 1, MAX_CHANNELS)
    size = meta["image_size"]
    if not (_is_int_list(size, minimum=1) and len(size) == 2
            and all(side <= MAX_IMAGE_SIDE for side in size)):
        raise refuse("image_size", f"[height, width] in pixels, each 1 to {MAX_IMAGE_SIDE}", size)
    for name in ("mean", "std"):
        if name in meta:
            _check_channel_stats(meta[name], name, meta["in_channels"])


def _check_channel_stats(values: object, name: str, channels: int) -> None:
    ok = (isinstance(values, list) and len(values) == channels
          and all(_is_finite(v) for v in values)
          and (name != "std" or all(v > 0 for v in values)))
    if not ok:
        positive = " > 0" if name == "std" else ""
        raise refuse(name, f"a list of {channels} finite numbers{positive} (one per channel)",
                     values)


def check_config(config: object) -> TrainConfig:
    """The training config a checkpoint carries, as TrainConfig checks it."""
    if not isinstance(config, dict):
        raise refuse("config", "a JSON object of training options", config)
    try:
        made = TrainConfig.from_dict(config)
        made.validate()
    except (ConfigError, TypeError) as err:
        raise SchemaError(f"metadata field 'config': {printable(str(err))}") from None
    return made


def check_optimizer_meta(plain: object, tensor_names: Sequence[str]) -> None:
    """The optimizer's JSON part (param groups, non-tensor state) and its tensor names
    (``optim.<param id>.<slot>``) are what ``_flatten_optimizer`` writes."""
    if not isinstance(plain, dict) or set(plain) != {"state", "param_groups"}:
        raise refuse("optimizer", "an object with state and param_groups", plain)
    groups = plain["param_groups"]
    if not isinstance(groups, list) or not all(
            isinstance(g, dict) and _is_int_list(g.get("params"), minimum=0) for g in groups):
        raise refuse("optimizer.param_groups", "a list of objects with a params list", groups)
    ids = [pid for group in groups for pid in group["params"]]
    if len(set(ids)) != len(ids):
        raise SchemaError("metadata field 'optimizer.param_groups': a parameter id appears in "
                          "two places")
    known = set(ids)
    state = plain["state"]
    if not isinstance(state, dict) or not all(isinstance(s, dict) for s in state.values()):
        raise refuse("optimizer.state", "an object of per-parameter objects", state)
    for pid in state:
        if not (pid.isdigit() and int(pid) in known):
            raise SchemaError(f"metadata field 'optimizer.state': state for parameter "
                              f"{pid!r}, which no param group lists")
    for name in tensor_names:
        if name.startswith("optim."):
            match = _OPTIM_TENSOR.fullmatch(name)
            if match is None or int(match.group(1)) not in known:
                raise SchemaError(f"tensor {name!r}: expected optim.<id>.<slot> "
                                  "for a parameter id a param group lists")


# ---------------------------------------------------------------------------------------------
# Tensors against the model and optimizer they are loaded into


def describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


def check_tensors(found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                  prefix: str) -> None:
    """``found`` has exactly the names of ``expected``, each with its dtype and shape; names in
    messages get ``prefix`` (the checkpoint's section, e.g. ``model.``)."""
    missing = [k for k in expected if k not in found]
    if missing:
        raise SchemaError(f"tensor {prefix + missing[0]!r} missing (expected "
                          f"{describe(expected[missing[0]])}; {len(missing)} missing in all)")
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        raise SchemaError(f"unexpected tensor {prefix + unexpected[0]!r} "
                          f"({len(unexpected)} in all)")
    for name, want in expected.items():
        got = found[name]
        if got.dtype != want.dtype or got.shape != want.shape:
            raise SchemaError(f"tensor {prefix + name!r}: expected {describe(want)}, "
                              f"found {describe(got)}")


def check_optimizer_fit(plain: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                        optimizer: torch.optim.Optimizer) -> None:
    """The saved optimizer state fits ``optimizer``: as many param groups, each with as many
    parameters, no group option it lacks, and every state tensor shaped like its parameter
    (or a scalar, like Adam's step)."""
    saved, current = plain["param_groups"], optimizer.param_groups
    if len(saved) != len(current):
        raise SchemaError(f"optimizer: {len(saved)} parameter groups saved, the optimizer has "
                          f"{len(current)}")
    params: dict[int, torch.Tensor] = {}
    for index, (old, new) in enumerate(zip(saved, current, strict=True)):
        if len(old["params"]) != len(new["params"]):
            raise SchemaError(f"optimizer: parameter group {index} holds {len(old['params'])} "
                              f"parameters, the optimizer's holds {len(new['params'])}")
        unknown = sorted(set(old) - set(new))
        if unknown:
            raise SchemaError(f"optimizer: parameter group {index}: unknown field "
                              f"{unknown[0]!r}")
        params.update(zip(old["params"], new["params"], strict=True))
    for name, value in tensors.items():
        match = _OPTIM_TENSOR.fullmatch(name)
        if match is None:
            continue
        param = params[int(match.group(1))]
        if value.dim() != 0 and value.shape != param.shape:
            raise SchemaError(f"tensor {name!r}: expected shape {list(param.shape)} "
                              f"(its parameter's) or a scalar, found {describe(value)}")
        if value.is_floating_point() != param.is_floating_point():
            raise SchemaError(f"tensor {name!r}: expected a {param.dtype} like its "
                              f"parameter, found {describe(value)}")


def check_tally(tally: Mapping[str, Any], fields: Sequence[str]) -> None:
    """The saved running sums of an epoch: only ``fields``, each a finite number >= 0."""
    for name, value in tally.items():
        if name not in fields:
            raise SchemaError(f"metadata field 'tally': unknown field {name!r} "
                              f"(expected {', '.join(fields)})")
        if not _is_finite(value) or value < 0:
            raise refuse(f"tally.{name}", "a finite number >= 0", value)


def check_rng(rng: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """The RNG states ``hfsnet.train.runtime.rng_state`` writes, in the form its reader takes."""
    python, numpy_state = rng.get("python"), rng.get("numpy")
    if not (isinstance(python, list) and len(python) == 3 and _is_int(python[0])
            and _is_int_list(python[1], minimum=0) and len(python[1]) == 625
            and max(python[1]) < 2**32 and (python[2] is None or _is_finite(python[2]))):
        raise refuse("rng.python", "Python's random state [version, 625 integers, gauss]",
                     python)
    if not (isinstance(numpy_state, list) and len(numpy_state) == 5
            and numpy_state[0] == "MT19937" and _is_int_list(numpy_state[1], minimum=0)
            and len(numpy_state[1]) == 624 and max(numpy_state[1]) < 2**32
            and _is_int(numpy_state[2]) and 0 <= numpy_state[2] <= 624
            and _is_int(numpy_state[3]) and _is_finite(numpy_state[4])):
        raise refuse("rng.numpy", "numpy's MT19937 state [name, 624 integers, pos, "
                     "has_gauss, cached]", numpy_state)
    check_tensors({"torch": tensors["extra.rng.torch"]} if "extra.rng.torch" in tensors else {},
                  {"torch": torch.get_rng_state()}, "extra.rng.")


def dataclass_fields(instance: object) -> list[str]:
    return [f.name for f in dataclasses.fields(instance)]  # type: ignore[arg-type]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_list(value: object, *, minimum: int) -> bool:
    return isinstance(value, list) and all(_is_int(v) and v >= minimum for v in value)


def _is_finite(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))
