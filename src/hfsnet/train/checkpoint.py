"""Checkpoints: one safetensors file holding weights, optimizer tensors and JSON metadata.

Nothing here unpickles or imports a name read from a file: tensors come from safetensors, the
rest is JSON in the safetensors header, and the model is rebuilt through the registry.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from hfsnet.data import DataSplits
from hfsnet.errors import HfsnetError
from hfsnet.fsutil import WriteError, atomic_link, atomic_write_bytes, tensor_digest
from hfsnet.models import FeatureClassifier, ModelError, create_model
from hfsnet.train import checkpoint_schema as schema
from hfsnet.train.checkpoint_schema import SchemaError

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"
_META_KEY = "hfsnet"


class CheckpointError(HfsnetError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


@contextlib.contextmanager
def _refusing(path: Path) -> Iterator[None]:
    """Turn a SchemaError (which names the field) into a CheckpointError naming the file too."""
    try:
        yield
    except SchemaError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, slots in state["state"].items():
        plain[str(pid)] = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[str(pid)][key] = value
    return tensors, {"state": plain, "param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {
        int(pid): dict(slots) for pid, slots in plain["state"].items()
    }
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(
    path: Path,
    model: FeatureClassifier,
    meta: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save ``model`` (and optionally ``optimizer``) with ``meta`` atomically to ``path``."""
    atomic_write_bytes(path, checkpoint_bytes(model, meta, optimizer=optimizer,
                                              extra_tensors=extra_tensors))


def checkpoint_bytes(
    model: FeatureClassifier,
    meta: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> bytes:
    """The checkpoint file :func:`save_checkpoint` writes, as bytes."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {**meta, "format_version": FORMAT_VERSION, "model": model.model_name,
            "model_options": model.model_options, "num_classes": model.num_classes}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
    for name, value in (extra_tensors or {}).items():
        tensors[f"extra.{name}"] = value.detach().cpu().contiguous()
    meta["sha256"] = tensor_digest(tensors)
    return st_save(tensors, metadata={_META_KEY: json.dumps(meta)})


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    def optimizer_state(self) -> dict | None:
        if "optimizer" not in self.meta:
            return None
        return _unflatten_optimizer(self.tensors, self.meta["optimizer"])

    def build_model(self) -> FeatureClassifier:
        """Rebuild the model through the registry and load its weights, which must have
        exactly the model's tensor names, dtypes and shapes, and be finite."""
        meta = self.meta
        try:
            model = create_model(meta["model"], num_classes=meta["num_classes"],
                                 in_channels=meta["in_channels"], **meta["model_options"])
        except ModelError as err:
            if ":" in meta["model"]:
                raise CheckpointError(
                    f"{self.path}: the model is the user network {meta['model']}; pass --model "
                    f"{meta['model']} to rebuild it (hfsnet never imports code named in a "
                    f"checkpoint)") from None
            raise CheckpointError(f"{self.path}: {err}") from None
        weights = self.section("model")
        check_weights(self.path, model, weights)
        model.load_state_dict(weights)
        return model


def check_weights(path: Path, model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Refuse ``weights`` (the checkpoint ``path``'s model section) unless they have exactly
    ``model``'s tensor names, dtypes and shapes and are finite: ``load_state_dict`` would cast
    a float64 tensor silently and run on NaN."""
    try:
        schema.check_tensors(weights, model.state_dict(), "model.")
    except SchemaError as err:
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(f"{path}: weights do not fit model {name!r}: {err}") from None
    bad = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite weights in {bad[:3]}; refusing to use them")


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoint.safetensors``."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise CheckpointError(f"--checkpoint: no checkpoint at {p} (expected a run directory "
                              f"holding {CHECKPOINT_NAME}, or such a file)")
    return p


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint; never unpickles.

    The header and the metadata are checked (``checkpoint_schema``) before the tensor bytes
    are read; then the tensors are checked against the metadata's checksum."""
    p = resolve_checkpoint_path(path)
    try:
        with p.open("rb") as file, _refusing(p):
            header = schema.read_header(file, p.stat().st_size)
            meta = _read_meta(header)
            file.seek(0)
            payload = file.read()
    except OSError as err:
        raise CheckpointError(f"{p}: cannot read the checkpoint ({err.strerror or err})") from None
    try:
        tensors = st_load(payload)
    except SafetensorError as err:
        raise CheckpointError(f"{p}: not a readable hfsnet checkpoint ({err})") from None
    if tensor_digest(tensors) != meta["sha256"]:
        raise CheckpointError(f"{p}: checksum mismatch: the file is corrupt")
    return Checkpoint(p, meta, tensors)


def _read_meta(header: dict[str, Any]) -> dict[str, Any]:
    """The hfsnet metadata of a checked safetensors header, itself checked."""
    text = header.get("__metadata__", {}).get(_META_KEY)
    if text is None:
        raise SchemaError(f"no {_META_KEY!r} metadata: not an hfsnet checkpoint")
    # surrogatepass: a lone surrogate (JSON allows "\ud800") is then refused as bad JSON
    meta = schema.parse_json(text.encode("utf-8", "surrogatepass"), "metadata")
    if isinstance(meta, dict) and meta.get("format_version") != FORMAT_VERSION:
        raise SchemaError(f"format version {meta.get('format_version')!r}, this hfsnet reads "
                          f"{FORMAT_VERSION}")
    schema.check_meta(meta, [name for name in header if name != "__metadata__"])
    return meta


def check_resume_meta(ckpt: Checkpoint) -> None:
    """Refuse to resume from ``ckpt`` unless its metadata has every field a resumed run reads
    (the config, position, running sums, history, RNG and optimizer state, data digest)."""
    with _refusing(ckpt.path):
        schema.require(ckpt.meta, schema.RESUME_FIELDS, "a resumable checkpoint")


class Averager(Protocol):
    """A weight average or lookahead: what ``Trainer.restore`` loads from ``extra.<name>``."""

    def state_tensors(self) -> dict[str, torch.Tensor]: ...


def check_resume_state(ckpt: Checkpoint, optimizer: torch.optim.Optimizer, *,
                       model: torch.nn.Module, tally: object,
                       averages: Mapping[str, Averager | None]) -> None:
    """Refuse to resume from ``ckpt`` unless everything ``Trainer.restore`` loads fits the
    Trainer it restores: the resume fields of the metadata, the weights (``model``), the
    optimizer state (``optimizer``), the epoch's running sums (only the fields of the
    dataclass instance ``tally``), the RNG states, and each weight average in ``averages``
    (``extra.<name>`` in the file; None: not used by this run)."""
    meta = ckpt.meta
    check_resume_meta(ckpt)
    with _refusing(ckpt.path):
        check_weights(ckpt.path, model, ckpt.section("model"))
        schema.check_optimizer_fit(meta["optimizer"], ckpt.tensors, optimizer)
        schema.check_tally(meta["tally"], schema.dataclass_fields(tally))
        schema.check_rng(meta["rng"], ckpt.tensors)
        for name, average in averages.items():
            if average is not None:
                schema.check_tensors(ckpt.section(f"extra.{name}"), average.state_tensors(),
                                     f"extra.{name}.")


# Exactly the names CheckpointStore.save writes; anything else in checkpoints/ (a copy the
# user made, notes) is not ours and never read.
_STEP_NAME = re.compile(r"step-(\d{9,})\.safetensors")


def _step_of(path: Path) -> int | None:
    """The step of a step checkpoint's file name; None for names that are not ours."""
    match = _STEP_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


class CheckpointStore:
    """The checkpoints of one run directory.

    Every save writes ``checkpoints/step-NNNNNNNNN.safetensors`` atomically, then points
    ``checkpoint.safetensors`` (what evaluate/predict read) at it with an atomic hard-link swap,
    then deletes step files beyond the newest ``keep_last`` — never one in ``protected`` (the
    checkpoint a run resumed from), and only after the new one is complete.
    """

    def __init__(self, run_dir: Path, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise CheckpointError(f"--keep-last must be >= 1, got {keep_last}")
        self.run_dir = run_dir
        self.step_dir = run_dir / "checkpoints"
        self.keep_last = keep_last
        self.protected: set[Path] = set()

    @property
    def latest(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def step_files(self) -> list[Path]:
        """Complete step checkpoints, oldest first (temporary files and names that are not
        ``step-NNNNNNNNN.safetensors`` are not listed)."""
        steps = {path: _step_of(path) for path in self.step_dir.glob("step-*.safetensors")}
        return sorted((p for p, step in steps.items() if step is not None), key=steps.__getitem__)

    def clean_temporaries(self) -> list[Path]:
        """Delete leftovers of saves that were killed midway; they are never read."""
        leftovers = [*self.run_dir.glob(".*.tmp"), *self.step_dir.glob(".*.tmp")]
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers

    def save(self, step: int, model: FeatureClassifier, meta: dict[str, Any], *,
             optimizer: torch.optim.Optimizer | None = None,
             extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
        path = self.step_dir / f"step-{step:09d}.safetensors"
        try:
            save_checkpoint(path, model, meta, optimizer=optimizer, extra_tensors=extra_tensors)
            atomic_link(path, self.latest)
        except WriteError as err:
            previous = self.latest if self.latest.exists() else "none yet"
            raise CheckpointError(f"{err}; the previous checkpoint ({previous}) is "
                                  "intact") from err
        self._rotate()
        return path

    def _rotate(self) -> None:
        files = self.step_files()
        for old in files[: max(0, len(files) - self.keep_last)]:
            if old.resolve() not in self.protected:
                old.unlink(missing_ok=True)

    def newest_valid(self) -> Checkpoint | None:
        """The newest checkpoint that loads and verifies; corrupt ones are skipped."""
        candidates = [*reversed(self.step_files())]
        if self.latest.exists():
            candidates.append(self.latest)
        for path in candidates:
            try:
                return load_checkpoint(path)
            except CheckpointError:
                continue
        return None


def data_meta(data: DataSplits) -> dict[str, Any]:
    """What predict/evaluate need to feed new images the way the model was trained."""
    return {"classes": data.classes, "mean": list(data.mean), "std": list(data.std),
            "in_channels": data.in_channels, "image_size": list(data.image_size),
            "data_digest": data.digest, "data_name": data.name}
