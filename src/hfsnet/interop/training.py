"""What `hfsnet train` adds through this package: config files, user networks, --log.

Precedence, lowest first: TrainConfig defaults, the recipe (``--recipe``, else the file's), the
config file, command-line flags. ``--model-opt`` and ``--share-layers`` update the file's
``model_options`` key by key.

``--log tensorboard`` attaches its hooks to the Trainer that ``fresh_trainer`` builds, before
``fit``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hfsnet.data import data_spec
from hfsnet.interop.config_files import read_config_file
from hfsnet.interop.tblog import (
    LOG_DIR,
    LOG_KINDS,
    LogError,
    TensorBoardLogger,
    summary_writer_class,
)
from hfsnet.interop.user_models import is_user_spec, register_user_model
from hfsnet.train import TrainConfig, TrainResult, resolve_config, train
from hfsnet.train.run import fresh_trainer


def prepare_run(model: str | None, *, resume: str | None, log: str) -> None:
    """Checks and imports before any run starts, fresh or resumed.

    A resumed run rebuilds its model from the checkpoint's config, so a user network has to be
    registered (from the --model the user typed) before that.
    """
    if resume and log != "none":
        raise LogError(f"--log {log}: not available with --resume yet; resume without --log")
    if model and is_user_spec(model):
        register_user_model(model)


def train_config(config_file: str | Path | None, recipe: str | None = None,
                 flags: Mapping[str, Any] | None = None, *,
                 share_layers: Sequence[str] | None = None) -> TrainConfig:
    """The run's config from an optional file and the command-line ``flags``: field values of
    the flags that were given (a None value counts as not given).

    A user network (``model`` of the form ``module.path:factory``) is imported and registered
    here, so the trainer builds it through the registry like any other model.
    """
    values = read_config_file(config_file) if config_file else {}
    file_recipe = values.pop("recipe", None)
    flags = dict(flags or {})
    options = {**values.get("model_options", {}), **(flags.pop("model_options", None) or {})}
    if share_layers:
        options["share_layers"] = list(share_layers)
    values.update({key: value for key, value in flags.items() if value is not None})
    values["model_options"] = options
    if not values.get("data"):
        values["data"] = data_spec(None)  # $HFSNET_DATA, else an error naming --data
    config = resolve_config(recipe or file_recipe or "default", **values)
    if is_user_spec(config.model):
        register_user_model(config.model)
    return config


def train_with_log(config: TrainConfig, out_dir: str | Path, *, log: str = "none",
                   progress: bool = True, overwrite: bool = False) -> TrainResult:
    """``hfsnet.train.train``, with TensorBoard logs in ``out_dir/tensorboard`` when ``log`` is
    "tensorboard"; ``overwrite`` replaces a run already in ``out_dir``."""
    if log not in LOG_KINDS:
        raise LogError(f"--log must be one of {LOG_KINDS}, got {log!r}")
    if log == "none":
        return train(config, out_dir, progress=progress, overwrite=overwrite)
    summary_writer_class()  # fail before loading data when tensorboard is missing
    trainer = fresh_trainer(config, out_dir, progress=progress, overwrite=overwrite)
    logger = TensorBoardLogger(trainer, Path(out_dir) / LOG_DIR)
    try:
        result = trainer.fit()
        logger.finish()
    finally:
        logger.close()
    return result
