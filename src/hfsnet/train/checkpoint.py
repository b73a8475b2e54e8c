"""Checkpoints: one safetensors file holding weights, optimizer tensors and JSON metadata.

Nothing here unpickles or imports a name read from a file: tensors come from safetensors, the
rest is JSON in the safetensors header, and the model is rebuilt through the registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from hfsnet.data import DataSplits
from hfsnet.errors import HfsnetError
from hfsnet.models import FeatureClassifier, UnknownModelError, create_model

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"
_META_KEY = "hfsnet"


class CheckpointError(HfsnetError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, rename: readers see the old file
    or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(
    path: Path,
    model: FeatureClassifier,
    meta: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save ``model`` (and optionally ``optimizer``) with ``meta`` atomically to ``path``."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {**meta, "format_version": FORMAT_VERSION, "model": model.model_name,
            "model_options": model.model_options, "num_classes": model.num_classes}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
    for name, value in (extra_tensors or {}).items():
        tensors[f"extra.{name}"] = value.detach().cpu().contiguous()
    meta["sha256"] = _digest(tensors)
    atomic_write_bytes(path, st_save(tensors, metadata={_META_KEY: json.dumps(meta)}))


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
        """Rebuild the model through the registry and load its weights."""
        meta = self.meta
        try:
            model = create_model(meta["model"], num_classes=meta["num_classes"],
                                 in_channels=meta["in_channels"], **meta["model_options"])
        except UnknownModelError as err:
            if ":" in meta["model"]:
                raise CheckpointError(
                    f"{self.path}: the model is the user network {meta['model']}; pass --model "
                    f"{meta['model']} to rebuild it (hfsnet never imports code named in a "
                    f"checkpoint)") from None
            raise CheckpointError(f"{self.path}: {err}") from None
        weights = self.section("model")
        bad = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise CheckpointError(f"{self.path}: non-finite weights in {bad[:3]}; refusing to "
                                  f"use them")
        expected = model.state_dict()
        misfit = [k for k, v in expected.items() if k not in weights or weights[k].shape != v.shape]
        unexpected = [k for k in weights if k not in expected]
        if misfit or unexpected:
            raise CheckpointError(
                f"{self.path}: weights do not fit model {meta['model']!r} "
                f"(missing or misshapen {misfit[:5]}, unexpected {unexpected[:5]})"
            )
        model.load_state_dict(weights)
        return model


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
    """Read and verify a checkpoint; never unpickles."""
    p = resolve_checkpoint_path(path)
    payload = p.read_bytes()
    try:
        tensors = st_load(payload)
        header_len = int.from_bytes(payload[:8], "little")
        header = json.loads(payload[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][_META_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{p}: not a readable hfsnet checkpoint ({err})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: format version {meta.get('format_version')!r}, "
                              f"this hfsnet reads {FORMAT_VERSION}")
    if _digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{p}: checksum mismatch: the file is corrupt")
    return Checkpoint(p, meta, tensors)


def _step_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


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
        """Complete step checkpoints, oldest first (temporary files are not listed)."""
        return sorted(self.step_dir.glob("step-*.safetensors"), key=_step_of)

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
            self._point_latest_at(path)
        except OSError as err:
            previous = self.latest if self.latest.exists() else "none yet"
            raise CheckpointError(f"could not save checkpoint {path}: {err}; the previous "
                                  f"checkpoint ({previous}) is intact") from err
        self._rotate()
        return path

    def _point_latest_at(self, path: Path) -> None:
        tmp = self.run_dir / f".{CHECKPOINT_NAME}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            atomic_write_bytes(self.latest, path.read_bytes())  # no hard links here: copy
            return
        os.replace(tmp, self.latest)

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
