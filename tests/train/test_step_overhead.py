"""The step loop reads numbers off the device only when something needs them, and the deferred
finiteness check still names the first non-finite step."""

import io

import pytest
import torch

from hfsnet.data import load_dataset
from hfsnet.train import loop, resolve_config
from hfsnet.train.checkpoint import load_checkpoint
from hfsnet.train.loop import NonFiniteError, Trainer
from hfsnet.train.progress import Progress
from hfsnet.train.run import build_model
from tests.helpers import TINY_HFS

# What reads a tensor's value on the host, waiting for the device.
SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__")


def tiny_trainer(folder, out, **over):
    values = dict(model="hfs", data=str(folder), epochs=2, batch_size=4, model_options=TINY_HFS,
                  precision="fp32", channels_last=False)
    cfg = resolve_config(**{**values, **over})
    data = load_dataset(str(folder))
    torch.manual_seed(0)
    return Trainer(cfg, out, data, build_model(cfg, data), progress=False)


def count_epoch_syncs(trainer, monkeypatch) -> list[int]:
    """Host syncs made inside each ``_train_epoch`` call of a ``fit`` (evaluation and the end
    of epoch checkpoint are outside it)."""
    counts: list[int] = []
    inside = {"on": False}
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if inside["on"]:
                counts[-1] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    train_epoch = trainer._train_epoch

    def epoch(index):
        counts.append(0)
        inside["on"] = True
        try:
            return train_epoch(index)
        finally:
            inside["on"] = False

    monkeypatch.setattr(trainer, "_train_epoch", epoch)
    trainer.fit()
    return counts


def test_default_policy_syncs_once_per_epoch_not_per_step(tiny_folder, tmp_path, monkeypatch):
    trainer = tiny_trainer(tiny_folder, tmp_path / "run")
    steps = len(trainer.loader)
    assert steps >= 10
    counts = count_epoch_syncs(trainer, monkeypatch)
    # one read of the pending steps, one of the epoch's (rank-summed) totals
    assert counts == [2, 2]
    assert trainer.history[-1]["train_loss"] > 0


def test_skip_policy_and_step_hooks_sync_every_step(tiny_folder, tmp_path, monkeypatch):
    """The counter sees syncs: ``skip`` decides before each update, a hook reads each loss."""
    skip = tiny_trainer(tiny_folder, tmp_path / "skip", nonfinite="skip")
    assert min(count_epoch_syncs(skip, monkeypatch)) >= len(skip.loader)
    monkeypatch.undo()
    hooked = tiny_trainer(tiny_folder, tmp_path / "hooked")
    losses = {}
    hooked.step_hooks.append(losses.__setitem__)
    assert min(count_epoch_syncs(hooked, monkeypatch)) >= len(hooked.loader)
    assert sorted(losses) == list(range(2 * len(hooked.loader)))
    assert all(isinstance(v, float) and v > 0 for v in losses.values())


def test_deferred_sums_match_per_step_losses(tiny_folder, tmp_path):
    """The epoch's train loss from the once-per-epoch read equals the mean of the per-step
    losses a hook sees (every batch has the same size)."""
    plain = tiny_trainer(tiny_folder, tmp_path / "plain")
    plain.fit()
    hooked = tiny_trainer(tiny_folder, tmp_path / "hooked")
    losses = {}
    hooked.step_hooks.append(losses.__setitem__)
    hooked.fit()
    steps = len(hooked.loader)
    first_epoch = [losses[s] for s in range(steps)]
    assert plain.history[0]["train_loss"] == pytest.approx(sum(first_epoch) / steps, rel=1e-12)
    assert plain.history[0]["train_loss"] == hooked.history[0]["train_loss"]


def poison_loss_at(trainer, bad_steps):
    """NaN logits in the training forward passes numbered ``bad_steps`` (0-based); returns the
    list of forward passes run."""
    forwards = []

    def poison(module, inputs, output):
        if not module.training:
            return output
        forwards.append(len(forwards))
        return output * float("nan") if forwards[-1] in bad_steps else output

    trainer.model.head.register_forward_hook(poison)
    return forwards


def test_stop_policy_names_the_first_non_finite_step_when_deferred(tiny_folder, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(loop, "SYNC_EVERY", 4)
    trainer = tiny_trainer(tiny_folder, tmp_path / "run")
    steps = len(trainer.loader)
    bad = steps + 5  # epoch 2, batch 6
    forwards = poison_loss_at(trainer, {bad, bad + 1})
    with pytest.raises(NonFiniteError, match=rf"at step {bad} \(epoch 2, batch 6\)"):
        trainer.fit()
    # caught at the next sync: within SYNC_EVERY steps, not at the end of the epoch
    assert bad < len(forwards) <= bad + 4 < 2 * steps
    ckpt = load_checkpoint(trainer.out_dir)
    assert ckpt.meta["global_step"] == steps  # the end of epoch 1: the last good model
    assert all(v.isfinite().all() for v in ckpt.section("model").values()
               if v.is_floating_point())


def test_stop_policy_names_a_step_whose_gradient_alone_is_non_finite(tiny_folder, tmp_path):
    trainer = tiny_trainer(tiny_folder, tmp_path / "run", epochs=1)
    backwards = []

    def poison(grad):
        backwards.append(len(backwards))
        return grad * float("inf") if backwards[-1] == 7 else grad

    next(trainer.model.parameters()).register_hook(poison)
    with pytest.raises(NonFiniteError, match=r"at step 7 \(epoch 1, batch 8\)"):
        trainer.fit()


def test_save_syncs_first_and_refuses_a_pending_non_finite_step(tiny_folder, tmp_path):
    """A save between syncs (a signal, say) brings the pending steps in and saves nothing
    non-finite."""
    trainer = tiny_trainer(tiny_folder, tmp_path / "run")
    poison_loss_at(trainer, {2})
    trainer.model.train()
    batches = trainer.loader.epoch(0)
    for step in range(3):
        x, y = next(batches)
        trainer._pending.add(step, len(y), trainer._train_step(x, y, step))
        trainer.tally.step += 1
    assert len(trainer._pending) == 3
    with pytest.raises(NonFiniteError, match="at step 2"):
        trainer.save()
    assert not trainer.store.latest.exists()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_progress_redraws_at_most_every_redraw_interval():
    stream = FakeTerminal()
    bar = Progress(1000, "epoch 1/1", stream=stream)
    drawn = 0
    for done in range(1, 1001):
        if bar.due(done):
            bar.update(done, 32 * done, 1.0, 0.5)
            drawn += 1
    # a loop this fast draws the first and the last step, not one line per step
    assert 2 <= drawn < 50
    assert stream.getvalue().count("\r") == drawn
    assert "] 1000/1000 loss 1.0000 acc  50.0%" in stream.getvalue().rsplit("\r", 1)[1]


def test_log_progress_prints_about_ten_lines():
    stream = io.StringIO()
    bar = Progress(100, "epoch 1/1", stream=stream)
    for done in range(1, 101):
        bar.update(done, done, 1.0, 0.5)
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 11
    assert lines[-1].startswith("epoch 1/1 [########################] 100/100")
