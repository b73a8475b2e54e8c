"""Training config files: YAML, TOML or JSON mappings of ``TrainConfig`` field names.

A run directory's ``config.json`` is such a file, so ``--config runs/x/config.json`` reproduces
run x. YAML needs PyYAML (the ``yaml`` extra); TOML and JSON use the standard library.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from hfsnet.errors import HfsnetError
from hfsnet.train.config import ConfigError, TrainConfig, checked_fields
from hfsnet.train.options import value_problem

SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}

# YAML 1.1 reads exponent floats without a dot (1e-3, the usual way to write a learning rate)
# as strings; YAML 1.2 and this loader read them as floats.
_YAML_EXP_FLOAT = re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$")


class ConfigFileError(HfsnetError):
    """A config file that cannot be read; the message names the file."""


def _load_yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigFileError(f"--config {path}: reading YAML needs PyYAML; install it with "
                              "`pip install 'hfsnet[yaml]'`, or write the config as TOML or "
                              "JSON") from None

    class Loader(yaml.SafeLoader):
        """SafeLoader (builds no Python objects) that also reads 1e-3 as a float."""

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_EXP_FLOAT,
                                 list("-+0123456789."))
    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as err:
        raise ConfigFileError(f"--config {path}: not valid YAML: {err}") from None


def _parse(path: Path, kind: str, text: str) -> Any:
    if kind == "yaml":
        return _load_yaml(path, text)
    try:
        return tomllib.loads(text) if kind == "toml" else json.loads(text)
    except ValueError as err:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigFileError(f"--config {path}: not valid {kind.upper()}: {err}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The file's mapping, with keys, value types and ranges checked against ``TrainConfig``."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigFileError(f"--config {path}: unknown file type {path.suffix!r}; expected "
                              f"one of {', '.join(SUFFIXES)}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ConfigFileError(f"--config {path}: not a text file ({err.reason} at byte "
                              f"{err.start})") from None
    except OSError as err:
        raise ConfigFileError(f"--config {path}: cannot read it ({err.strerror})") from None
    values = _parse(path, kind, text)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigFileError(f"--config {path}: expected a mapping of config keys, got "
                              f"{type(values).__name__}")
    try:
        checked = checked_fields(TrainConfig, values)
    except ConfigError as err:
        raise ConfigError(f"--config {path}: {err}") from None
    for key, value in checked.items():
        problem = value_problem(TrainConfig, key, value)
        if problem:
            raise ConfigError(f"--config {path}: config key {key!r} {problem}, got {value!r}")
    return checked
