"""Helpers the tests share: a command's JSON output, the tiny hfs net (as options, CLI flags or a
model), and checkpoint metadata for it. Import as ``from tests.helpers import ...``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hfsnet.data import sources
from hfsnet.models import FeatureClassifier, create_model

# Two one-layer stages: trains on the 16x16 test folders in about a second.
TINY_HFS: dict[str, Any] = {"stages": [1, 1], "growth": 8, "stem": 8}

# What predict/evaluate read from a checkpoint of a 2-class 16x16 RGB model.
CHECKPOINT_META: dict[str, Any] = {"classes": ["a", "b"], "in_channels": 3,
                                   "image_size": [16, 16], "mean": [0.5] * 3, "std": [0.25] * 3}


def last_json(capsys) -> dict[str, Any]:
    """The JSON object a ``--json`` command printed as the last line of stdout."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def tiny_hfs_options(**overrides: Any) -> dict[str, Any]:
    return {**TINY_HFS, **overrides}


def tiny_hfs(num_classes: int = 2, **overrides: Any) -> FeatureClassifier:
    return create_model("hfs", num_classes=num_classes, **tiny_hfs_options(**overrides))


def model_opt_flags(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``--model-opt <prefix>key=value`` per option, the value as the JSON the CLI parses."""
    flags = []
    for key, value in options.items():
        flags += ["--model-opt", f"{prefix}{key}={json.dumps(value, separators=(',', ':'))}"]
    return flags


def tiny_hfs_flags(**overrides: Any) -> list[str]:
    """``--model hfs`` and the tiny net's ``--model-opt`` flags."""
    return ["--model", "hfs", *model_opt_flags(tiny_hfs_options(**overrides))]


def decodes_counted(monkeypatch: Any) -> list[int]:
    """Count calls of the image-folder decoder."""
    calls: list[int] = []
    real = sources.read_image_folder

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sources, "read_image_folder", counting)
    return calls
