"""The Trainer: one epoch at a time, a checkpoint after each, metrics as JSON lines. Building a
run (model, data, seeding, fresh or resumed) is ``hfsnet.train.run``."""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from hfsnet.data import AugmentConfig, BatchLoader, DataSplits
from hfsnet.data.augment import downscale
from hfsnet.errors import HfsnetError
from hfsnet.fsutil import atomic_write_bytes
from hfsnet.models import FeatureClassifier
from hfsnet.models.base import count_params
from hfsnet.train import whiten_bias
from hfsnet.train.allocator import allocator_in_effect
from hfsnet.train.checkpoint import (
    Checkpoint,
    CheckpointStore,
    check_resume_state,
    data_meta,
)
from hfsnet.train.config import ConfigError, TrainConfig
from hfsnet.train.distributed import agree, convert_sync_batchnorm, init_distributed
from hfsnet.train.ema import Lookahead, WeightAverage
from hfsnet.train.evaluate import EvalResult, evaluate
from hfsnet.train.optim import ParamGroup, optimizer_for, set_lr_factor
from hfsnet.train.progress import Progress
from hfsnet.train.rundir import (
    TENSORBOARD_DIR,
    RunLock,
    check_belongs,
    new_run_id,
    read_run_id,
    refuse_existing_run,
    remove_run,
    run_files,
    write_run_id,
)
from hfsnet.train.runtime import (
    autocast,
    cpu_description,
    resolve_device,
    resolve_precision,
    rng_state,
    set_rng_state,
)
from hfsnet.train.schedule import lr_factor
from hfsnet.train.signals import GracefulStop
from hfsnet.train.steps import PendingSteps, StepOutcome, StepValues
from hfsnet.train.tta import FlipAverage

# Steps between host syncs when nothing needs their numbers sooner (a step hook, the progress
# line, a checkpoint, the end of the epoch). A non-finite step under the ``stop`` policy is
# therefore caught up to this many steps late, though still named exactly, and never saved:
# every save syncs first.
SYNC_EVERY = 50


@dataclass
class TrainResult:
    out_dir: str
    test_acc: float
    test_loss: float
    params: int
    train_seconds: float
    images_per_second: float
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    # What ran: the resolved precision, threads and CPU, so a time can be read for its machine.
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


StepHook = Callable[[int, float], None]
EpochHook = Callable[["Trainer", int], None]


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after a resumable checkpoint was saved."""

    def __init__(self, signum: int, checkpoint: Path, run_dir: Path) -> None:
        super().__init__(f"stopped by signal {signum}; resume with --resume {run_dir}")
        self.signum = signum
        self.checkpoint = checkpoint
        self.run_dir = run_dir

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class NonFiniteError(HfsnetError):
    """A NaN/Inf loss or gradient under the ``stop`` policy."""


@dataclass
class EpochTally:
    """Running sums of the current epoch; saved mid-epoch so a resumed epoch reports the same
    numbers as an uninterrupted one."""

    step: int = 0  # batches done in this epoch
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    skipped: int = 0  # steps dropped for non-finite values under the ``skip`` policy


@torch.no_grad()
def _match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (exp_avg, momentum_buffer, ...) its parameter's
    memory layout.

    ``load_state_dict`` keeps the layout of the loaded tensors, which a checkpoint stores
    contiguous (NCHW), while a channels-last model's parameters are NHWC. The fused kernels
    walk parameter, gradient and state memory in step, so mismatched strides pair the wrong
    elements and a resumed run drifts from the uninterrupted one."""
    for param, slots in optimizer.state.items():
        for key, value in slots.items():
            if (isinstance(value, torch.Tensor) and value.shape == param.shape
                    and value.stride() != param.stride()):
                slots[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


class Trainer:
    """Owns the model, optimizer and loader of one run; ``fit`` runs the remaining steps.

    State that a checkpoint restores exactly: weights, optimizer, completed epochs, the position
    inside the current epoch and its running sums, and the RNG states. The data order and the
    augmentation of every batch are functions of (seed, epoch, step), and the schedule of the
    step, so nothing else is needed for a bit-identical continuation.

    The run directory: ``fit`` takes its lock (``hfsnet.train.rundir``) and refuses one that
    holds another run unless ``overwrite``; nothing in it changes before the run's first write
    (a checkpoint or the first epoch's metrics), where an overwritten run's files are removed.
    """

    def __init__(self, config: TrainConfig, out_dir: Path, data: DataSplits,
                 model: FeatureClassifier, *, groups: list[ParamGroup] | None = None,
                 progress: bool = True, overwrite: bool = False) -> None:
        self.out_dir = out_dir
        self.data = data
        self.device = resolve_device(config.device)
        self.dist = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if config.batch_size % self.dist.world_size:
            raise ConfigError(f"--batch-size {config.batch_size} (the global batch) must be a "
                              f"multiple of the {self.dist.world_size} processes")
        if config.sync_bn and self.dist.enabled:
            model = convert_sync_batchnorm(model, self.device.type)  # type: ignore[assignment]
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=fmt)
        # The precision that runs is the one every checkpoint records, so a resume repeats it;
        # rank 0 measures `auto` and every rank takes its choice.
        precision = config.precision if self.dist.rank else resolve_precision(
            config.precision, self.device, self.model, (data.in_channels, *data.image_size),
            channels_last=config.channels_last, timed=not config.deterministic)
        precision = agree(precision, self.dist)
        self.config = config = dataclasses.replace(config, precision=precision)
        # What the steps run: DDP averages gradients over ranks; self.model stays the plain
        # module that is saved and evaluated.
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
            torch.manual_seed(config.seed + 1000 * self.dist.rank)  # own dropout per rank
        groups = groups or [ParamGroup("all", list(model.parameters()), config.lr)]
        self.optimizer = optimizer_for(config, groups)
        augment = AugmentConfig(crop_padding=config.crop_padding, flip=config.flip,
                                cutout=config.cutout, alternate_flips=config.alternate_flips)
        self.loader = BatchLoader(data.train, config.batch_size, mean=data.mean, std=data.std,
                                  shuffle=True, augment=augment, seed=config.seed,
                                  drop_last=len(data.train) > config.batch_size,
                                  device=self.device, channels_last=config.channels_last,
                                  rank=self.dist.rank, world_size=self.dist.world_size)
        self._check_lowres()
        self.total_steps = config.epochs * len(self.loader)
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.lookahead = (Lookahead(self.model, config.lookahead_every, self.total_steps)
                          if config.lookahead_every else None)
        self.store = CheckpointStore(out_dir, keep_last=config.keep_last)
        self.epoch = 0  # completed epochs
        self.tally = EpochTally()
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        # (global step, loss) after each step; a registered hook makes every step sync, since
        # it reads the loss at once.
        self.step_hooks: list[StepHook] = []
        # (trainer, epoch) after model.train() at the start of each epoch: freezing schedules
        # put modules back into eval mode or flip requires_grad here.
        self.epoch_hooks: list[EpochHook] = []
        whiten_bias.install(self)
        self._stop: GracefulStop | None = None
        self._params = list(self.model.parameters())
        self._pending = PendingSteps()
        self.run_id = new_run_id()  # ties every checkpoint to this run's directory
        self.overwrite = overwrite
        self.resumed = False
        self._lock = RunLock(out_dir)
        self._claimed = False  # whether this run has written to out_dir yet
        self._files_at_start = run_files(out_dir)

    @property
    def global_step(self) -> int:
        return self.epoch * len(self.loader) + self.tally.step

    def _finite_flag(self, loss: torch.Tensor) -> torch.Tensor:
        """Whether the loss and every gradient are finite, as a 0-dim bool on the device (no
        host sync). The gradients' total norm is never negative, so its sum with the loss is
        finite exactly when both are."""
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return loss.isfinite()
        # foreach: one fused pass over all gradients (torch's default on a CPU is a loop).
        return (torch.nn.utils.get_total_norm(grads, foreach=True) + loss).isfinite()

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> StepOutcome:
        """One optimizer step. Under ``stop`` the finiteness check is left on the device for
        :meth:`_sync`; ``skip`` must decide before the update, which costs a sync per step."""
        set_lr_factor(self.optimizer, lr_factor(self.config.schedule, step, self.total_steps,
                                                self.config.warmup_fraction))
        with autocast(self.device, self.config.precision):
            logits = self.train_model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite = self._finite_flag(loss.detach())
        skip_policy = self.config.nonfinite == "skip"
        if skip_policy and not bool(finite):
            self.optimizer.zero_grad(set_to_none=True)
            self.tally.skipped += 1
            return StepOutcome(torch.full((), float("nan"), device=loss.device),
                               torch.zeros((), dtype=torch.int64, device=loss.device))
        self.optimizer.step()
        if self.lookahead is not None:
            self.lookahead.after_step(self.model, step + 1)
        if self.average is not None:
            self.average.update(self.model)
        return StepOutcome(loss.detach(), (logits.argmax(1) == y).sum(),
                           None if skip_policy else finite)

    def _sync_due(self, bar: Progress) -> bool:
        """Whether the pending steps' numbers are needed after the step just run."""
        t = self.tally
        return (bool(self.step_hooks) or bar.due(t.step) or t.step == len(self.loader)
                or self._checkpoint_due() or len(self._pending) >= SYNC_EVERY)

    def _sync(self) -> list[StepValues]:
        """Read the pending steps (one host sync) into the epoch's running sums and return
        them; under ``stop`` a non-finite one raises, naming the first."""
        values = self._pending.collect()
        bad = next((v for v in values if not v.finite), None)
        if bad is not None:
            epoch, batch = divmod(bad.step, len(self.loader))
            raise NonFiniteError(
                f"non-finite loss or gradient at step {bad.step} (epoch {epoch + 1}, batch "
                f"{batch + 1}); the last good checkpoint is {self._last_good()} "
                f"(try a lower --lr, or --nonfinite skip)")
        t = self.tally
        for v in values:
            if v.loss == v.loss:  # a skipped step's NaN stays out of the running mean
                t.loss_sum += v.loss * v.size
                t.correct += v.hits
                t.seen += v.size
        return values

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        for hook in self.epoch_hooks:
            hook(self, epoch)
        t = self.tally
        bar = Progress(len(self.loader), f"epoch {epoch + 1}/{self.config.epochs}",
                       enabled=self.progress and self.dist.is_main)
        batches = self.loader.epoch(epoch, start_step=t.step,
                                    resolution=self._resolution(epoch))
        while True:
            # Timed: the batch's preparation, the step and any sync (which waits for the
            # device); not: hooks, progress and checkpoints, which follow a sync.
            start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            x, y = batch
            step = self.global_step
            self._pending.add(step, len(y), self._train_step(x, y, step))
            t.step += 1
            values = self._sync() if self._sync_due(bar) else []
            t.seconds += time.perf_counter() - start
            for v in values:
                for hook in self.step_hooks:
                    hook(v.step, v.loss)
            if values:
                bar.update(t.step, t.seen, t.loss_sum / max(1, t.seen),
                           t.correct / max(1, t.seen))
            self._maybe_checkpoint()
        bar.close()
        loss_sum, correct, seen = self.dist.sum(
            torch.tensor([t.loss_sum, t.correct, t.seen], dtype=torch.float64)).tolist()
        return {"train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                "seconds": t.seconds, "images_per_second": seen / max(1e-9, t.seconds),
                "lr": self.optimizer.param_groups[0]["lr"], "skipped_steps": t.skipped}

    def _check_lowres(self) -> None:
        """Refuse a ``--lowres-scale`` the model cannot take, before the run writes anything:
        one image of the downscaled size through the model in eval mode (no statistics move)."""
        config = self.config
        if not config.lowres_epochs():
            return
        probe = downscale(torch.zeros(1, self.data.in_channels, *self.data.image_size,
                                      device=self.device), config.lowres_scale)
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(probe)
        except (RuntimeError, ValueError) as error:
            size = "x".join(map(str, probe.shape[-2:]))
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "it failed"
            raise ConfigError(f"--lowres-scale {config.lowres_scale:g} gives {size} px images, "
                              f"which --model {config.model} cannot take ({reason})") from None
        finally:
            self.model.train(training)

    def _resolution(self, epoch: int) -> float:
        """The fraction of the full image side that ``epoch`` trains at."""
        return self.config.lowres_scale if epoch < self.config.lowres_epochs() else 1.0

    def _maybe_checkpoint(self) -> None:
        signum = self._stop.signum if self._stop is not None else None
        if self.dist.any(signum is not None):  # every rank stops after the same step
            path = self.save()
            raise TrainingInterrupted(signum or signal.SIGTERM, path, self.out_dir)
        if self._checkpoint_due():
            self.save()

    def _checkpoint_due(self) -> bool:
        """Whether ``checkpoint_every`` asks for a save after the step just run (the end of
        an epoch saves anyway)."""
        every = self.config.checkpoint_every
        mid_epoch = self.tally.step < len(self.loader)
        return bool(every) and self.global_step % every == 0 and mid_epoch

    def eval_model(self) -> torch.nn.Module:
        """What evaluation runs: the weight average if ``ema_decay`` is set, else the model;
        wrapped to average each image with its mirror (and shifted copies) if ``tta_flip`` (and
        ``tta_translate``) is set."""
        model = self.model if self.average is None else self.average.averaged_model(self.model)
        if not self.config.tta_flip:
            return model
        return FlipAverage(model, translate=self.config.tta_translate)

    def evaluate(self, split: str) -> EvalResult:
        c = self.config
        return evaluate(self.eval_model(), getattr(self.data, split), mean=self.data.mean,
                        std=self.data.std, batch_size=c.eval_batch_size, device=self.device,
                        precision=c.precision, channels_last=c.channels_last, dist=self.dist)

    def _end_of_epoch(self, epoch: int, stats: dict[str, float]) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": epoch + 1, **stats}
        start = time.perf_counter()
        if self.data.val is not None:
            val = self.evaluate("val")
            row.update(val_loss=val.loss, val_acc=val.acc)
        if self.config.track_test or epoch + 1 == self.config.epochs:
            test = self.evaluate("test")
            row.update(test_loss=test.loss, test_acc=test.acc)
        row["eval_seconds"] = time.perf_counter() - start
        return row

    def save(self) -> Path:
        """Checkpoint everything a bit-identical continuation needs; returns the file.

        Only rank 0 writes; the others return the path it writes to. Steps not yet synced
        are brought into the tally first, and a non-finite one stops the save (``stop``)."""
        self._sync()
        if not self.dist.is_main:
            return self.store.latest
        state = self.model.state_dict().items()
        bad = [k for k, v in state if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise NonFiniteError(f"non-finite values in {bad[:3]} at step {self.global_step}; "
                                 f"not saved, {self._last_good()} keeps the last good model")
        self._claim_run_dir()
        rng_plain, rng_tensors = rng_state()
        if self.average is not None:
            rng_tensors.update({f"ema.{k}": v for k, v in self.average.state_tensors().items()})
        if self.lookahead is not None:
            rng_tensors.update({f"lookahead.{k}": v
                                for k, v in self.lookahead.state_tensors().items()})
        meta = {**data_meta(self.data), "config": self.config.to_dict(), "epoch": self.epoch,
                "tally": asdict(self.tally), "global_step": self.global_step,
                "history": self.history, "rng": rng_plain, "run_id": self.run_id}
        return self.store.save(self.global_step, self.model, meta, optimizer=self.optimizer,
                               extra_tensors=rng_tensors)

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from ``ckpt`` (same config): weights, optimizer, position, RNG."""
        check_resume_state(ckpt, self.optimizer, model=self.model, tally=self.tally,
                           averages={"ema": self.average, "lookahead": self.lookahead})
        weights = ckpt.section("model")
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(ckpt.optimizer_state())
        _match_param_layouts(self.optimizer)
        self.epoch = ckpt.meta["epoch"]
        self.tally = EpochTally(**ckpt.meta["tally"])
        self.history = list(ckpt.meta["history"])
        set_rng_state(ckpt.meta["rng"], ckpt.tensors)
        if self.average is not None:
            self.average.load_state_tensors(ckpt.section("extra.ema"))
        if self.lookahead is not None:
            self.lookahead.load_state_tensors(ckpt.section("extra.lookahead"))
        self.store.protected.add(ckpt.path.resolve())
        # An id-less checkpoint predates run ids: the continued run gets a new one.
        self.run_id = ckpt.meta.get("run_id") or self.run_id
        self.resumed = True

    def _last_good(self) -> Path | str:
        """The checkpoint a failure leaves usable, for messages."""
        if (self._claimed or self.resumed) and self.store.latest.exists():
            return self.store.latest
        return "none (nothing saved yet)"

    def _open_run_dir(self) -> None:
        """Take the run directory's lock and check that this run may write there."""
        self._lock.acquire()
        try:
            if self.resumed:
                newest = self.store.newest_valid()
                if newest is not None:
                    check_belongs(self.out_dir, newest.path, newest.meta.get("run_id"))
            elif not self.overwrite:
                refuse_existing_run(self.out_dir, self._earlier_run_files())
        except BaseException:
            self._lock.release()
            raise

    def _earlier_run_files(self) -> list[str]:
        """The run files in out_dir that this run did not make: all of them, except a
        tensorboard/ folder that appeared after the Trainer was built (a logger attached to the
        Trainer opens it before ``fit``)."""
        return [name for name in run_files(self.out_dir)
                if name != TENSORBOARD_DIR or name in self._files_at_start]

    def _claim_run_dir(self) -> None:
        """Before this run's first write: remove the run it replaces, then write its identity
        (run.json and config.json, atomically). Later calls do nothing."""
        if self._claimed:
            return
        if not self.resumed:
            remove_run(self.out_dir, self._earlier_run_files())  # empty without overwrite
        self.store.clean_temporaries()
        if read_run_id(self.out_dir) is None:
            write_run_id(self.out_dir, self.run_id)
        config_file = self.out_dir / "config.json"
        if not (self.resumed and config_file.exists()):
            atomic_write_bytes(config_file, json.dumps(self.config.to_dict(), indent=2).encode())
        self._claimed = True

    def _write_metrics(self) -> None:
        """``metrics.jsonl``, one line per finished epoch, rewritten whole (atomically) from the
        history: a resumed run's file matches its checkpoint even if the stopped run wrote a
        line after its last save."""
        self._claim_run_dir()
        lines = "".join(json.dumps(row) + "\n" for row in self.history)
        atomic_write_bytes(self.out_dir / "metrics.jsonl", lines.encode())

    def _machine(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {"device": torch.cuda.get_device_name(self.device) if cuda else "cpu",
                "cpu": cpu_description(), "threads": torch.get_num_threads(),
                "precision": self.config.precision, "processes": self.dist.world_size,
                "allocator": allocator_in_effect(), "torch": torch.__version__}

    def fit(self) -> TrainResult:
        if self.dist.is_main:
            self._open_run_dir()
        try:
            with GracefulStop() as stop:
                self._stop = stop
                try:
                    for epoch in range(self.epoch, self.config.epochs):
                        row = self._end_of_epoch(epoch, self._train_epoch(epoch))
                        self.epoch, self.tally = epoch + 1, EpochTally()
                        self.history.append(row)
                        if self.dist.is_main:
                            self._write_metrics()
                        self.save()
                        self._report(row)
                finally:
                    self._stop = None
            return self.result()
        finally:
            self._lock.release()

    def _report(self, row: dict[str, Any]) -> None:
        if not (self.progress and self.dist.is_main):
            return
        parts = [f"epoch {row['epoch']}/{self.config.epochs}",
                 f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"]
        for split in ("val", "test"):
            if f"{split}_acc" in row:
                parts.append(f"{split} loss {row[f'{split}_loss']:.4f} "
                             f"acc {100 * row[f'{split}_acc']:.2f}%")
        parts.append(f"{row['seconds']:.1f}s {row['images_per_second']:,.0f} img/s")
        print(" | ".join(parts), flush=True)

    def result(self) -> TrainResult:
        last = self.history[-1]
        train_seconds = sum(r["seconds"] for r in self.history)
        images = sum(r["seconds"] * r["images_per_second"] for r in self.history)
        result = TrainResult(
            out_dir=str(self.out_dir), test_acc=last["test_acc"], test_loss=last["test_loss"],
            params=count_params(self.model), train_seconds=train_seconds,
            images_per_second=images / max(1e-9, train_seconds), epochs=self.epoch,
            history=self.history, machine=self._machine(),
        )
        if self.dist.is_main:
            atomic_write_bytes(self.out_dir / "result.json",
                               json.dumps(result.to_dict(), indent=2).encode())
        return result
