"""Run assembly: the model and data a config names, seeding and threads, fresh or resumed
Trainers, and the one-call ``train``/``resume``."""

from __future__ import annotations

from pathlib import Path

import torch

from hfsnet.data import DataSplits, load_dataset
from hfsnet.models import FeatureClassifier, create_model
from hfsnet.train.checkpoint import CheckpointError, CheckpointStore, check_resume_meta
from hfsnet.train.config import TrainConfig
from hfsnet.train.distributed import init_distributed
from hfsnet.train.loop import Trainer, TrainResult
from hfsnet.train.rundir import check_belongs, check_unlocked, refuse_existing_run, resolve_run_dir
from hfsnet.train.runtime import resolve_device, seed_everything


def build_model(config: TrainConfig, data: DataSplits) -> FeatureClassifier:
    options = {"image_size": data.image_size[0], **config.model_options}
    return create_model(config.model, num_classes=data.num_classes,
                        in_channels=data.in_channels, **options)


def load_data(config: TrainConfig) -> DataSplits:
    """The run's dataset. Under torchrun rank 0 decodes (and caches) first, so the other ranks
    read the cache instead of decoding the same images concurrently."""
    ctx = init_distributed(resolve_device(config.device).type)
    if not ctx.is_main:
        ctx.barrier()
    data = load_dataset(config.data, val_split=config.val_split, limit_train=config.limit_train,
                        seed=config.seed, image_size=config.image_size,
                        skip_bad=config.skip_bad)
    if ctx.is_main:
        ctx.barrier()
    return data


def train(config: TrainConfig, out_dir: str | Path, *, data: DataSplits | None = None,
          progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Train ``config.model`` on ``config.data`` (or ``data``); save the run to ``out_dir``,
    which must not hold another run unless ``overwrite``."""
    return fresh_trainer(config, out_dir, data=data, progress=progress,
                         overwrite=overwrite).fit()


def fresh_trainer(config: TrainConfig, out_dir: str | Path, *, data: DataSplits | None = None,
                  progress: bool = True, overwrite: bool = False) -> Trainer:
    """A seeded Trainer for a new run of ``config``, ready to ``fit``. Writes nothing: a
    directory in use or holding a run (without ``overwrite``) is refused before the data
    loads, and ``fit`` checks again under the directory's lock."""
    config.validate()
    out = Path(out_dir)
    check_unlocked(out)
    if not overwrite:
        refuse_existing_run(out)
    _prepare(config)
    data = data if data is not None else load_data(config)
    return assemble_trainer(config, out, data, progress=progress, overwrite=overwrite)


def assemble_trainer(config: TrainConfig, out: Path, data: DataSplits, *,
                     progress: bool = True, overwrite: bool = False) -> Trainer:
    """The Trainer of ``config`` over the model it names."""
    return Trainer(config, out, data, build_model(config, data), progress=progress,
                   overwrite=overwrite)


def _prepare(config: TrainConfig) -> None:
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def resume(run_dir: str | Path, *, data: DataSplits | None = None,
           progress: bool = True) -> TrainResult:
    """Continue the run in ``run_dir`` from its newest valid checkpoint, with its own config."""
    return resume_trainer(run_dir, data=data, progress=progress).fit()


def resume_trainer(run_dir: str | Path, *, data: DataSplits | None = None,
                   progress: bool = True) -> Trainer:
    """The Trainer of ``run_dir`` (or of the run whose ``checkpoints/`` folder or checkpoint
    file it names), restored to its newest valid checkpoint, ready to ``fit``."""
    run_dir = resolve_run_dir(run_dir)
    check_unlocked(run_dir)
    ckpt = CheckpointStore(run_dir).newest_valid()
    if ckpt is None:
        raise CheckpointError(f"--resume: no valid checkpoint in {run_dir}")
    check_belongs(run_dir, ckpt.path, ckpt.meta.get("run_id"))
    check_resume_meta(ckpt)
    config = TrainConfig.from_dict(ckpt.meta["config"])
    _prepare(config)
    data = data if data is not None else load_data(config)
    if data.digest != ckpt.meta["data_digest"]:
        raise CheckpointError(f"--resume: the data of {config.data!r} changed since "
                              f"{ckpt.path} was saved (content digest differs)")
    trainer = assemble_trainer(config, run_dir, data, progress=progress)
    trainer.restore(ckpt)
    return trainer
