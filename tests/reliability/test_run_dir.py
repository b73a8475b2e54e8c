"""A run directory loses nothing: bad flags, a fresh run over a finished one, two processes on
one --out, stale locks, foreign checkpoints and stray files in checkpoints/."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from hfsnet.cli import main
from hfsnet.data import load_dataset
from hfsnet.train import resolve_config
from hfsnet.train.checkpoint import CheckpointStore, load_checkpoint
from hfsnet.train.loop import Trainer, TrainingInterrupted
from hfsnet.train.run import build_model, resume_trainer
from hfsnet.train.rundir import LOCK_NAME, RunDirError, RunLock, read_run_id
from tests.helpers import tiny_hfs_flags, tiny_hfs_options

FLAGS = [*tiny_hfs_flags(), "--batch-size", "16", "--epochs", "1", "--precision", "fp32",
         "--quiet"]


def train_cli(data, out, *extra):
    """``hfsnet train`` in this process; its exit status (argparse's too)."""
    try:
        return main(["train", "--data", str(data), "--out", str(out), *FLAGS, *extra])
    except SystemExit as exit_:
        return exit_.code


def snapshot(run):
    """Every file under ``run`` with its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(tiny_folder, tmp_path):
    """A finished run (checkpoints every 2 steps) and the snapshot of its files."""
    run = tmp_path / "run"
    assert train_cli(tiny_folder, run, "--checkpoint-every", "2") == 0
    return run, snapshot(run)


def tiny_config(data, **over):
    values = dict(model="hfs", data=str(data), epochs=2, batch_size=16,
                  model_options=tiny_hfs_options(), precision="fp32", checkpoint_every=1)
    return resolve_config(**{**values, **over})


def tiny_trainer(data_dir, out, **over):
    cfg = tiny_config(data_dir, **over.pop("config", {}))
    data = load_dataset(str(data_dir))
    return Trainer(cfg, out, data, build_model(cfg, data), progress=False, **over)


def stop_at(trainer, step):
    """SIGTERM this process after global step ``step``, as `kill` would."""
    def hook(at, loss):
        if at == step:
            os.kill(os.getpid(), signal.SIGTERM)
    trainer.step_hooks.append(hook)


BAD = {
    "lr-inf": ["--lr", "inf"],  # refused by the parser
    "image-size-1": ["--image-size", "1"],
    "refused": ["--seed", "3"],  # a valid new run: refused without --overwrite
    "nan-refused": ["--lr", "1e30"],
    # with --overwrite: each fails before the new run's first save
    "nan-overwrite": ["--lr", "1e30", "--overwrite"],  # non-finite loss at step 1
    "model-overwrite": ["--model-opt", "growth=0", "--overwrite"],  # the model cannot be built
    "data-overwrite": ["--data", "no-such-folder", "--overwrite"],  # the data cannot be loaded
}


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_a_failing_or_refused_run_leaves_a_finished_run_byte_identical(finished, tiny_folder,
                                                                       bad, capsys):
    run, before = finished
    assert train_cli(tiny_folder, run, *bad) == 2
    assert snapshot(run) == before
    assert not list(run.glob(".*"))  # no lock, temporary or set-aside folder left behind
    capsys.readouterr()


def test_fresh_run_into_a_run_is_refused_and_replaced_with_overwrite(finished, tiny_folder,
                                                                     capsys):
    run, before = finished
    old_id = read_run_id(run)
    capsys.readouterr()
    assert train_cli(tiny_folder, run, "--seed", "7") == 2
    err = capsys.readouterr().err
    assert f"{run} holds a run (config.json" in err
    assert "--resume" in err and "--overwrite" in err
    assert snapshot(run) == before

    assert train_cli(tiny_folder, run, "--seed", "7", "--epochs", "2", "--overwrite") == 0
    assert json.loads((run / "config.json").read_text())["seed"] == 7
    new_id = read_run_id(run)
    assert new_id and new_id != old_id
    assert load_checkpoint(run).meta["run_id"] == new_id
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    steps = [p.name for p in CheckpointStore(run).step_files()]
    assert steps == ["step-000000004.safetensors", "step-000000008.safetensors"]  # none old
    assert not list(run.glob(".replaced-*"))


def test_a_directory_without_run_files_is_used_as_it_is(tiny_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train_cli(tiny_folder, out) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "config.json").exists()


def test_a_run_that_fails_before_writing_leaves_no_directory_it_made(tiny_folder, tmp_path,
                                                                     capsys):
    out = tmp_path / "new" / "run"
    assert train_cli(tiny_folder, out, "--lr", "1e30") == 2  # non-finite loss at step 1
    assert "loss" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "new").is_dir()  # only the folder it locked


def test_the_lock_removes_only_an_empty_directory_it_created(tmp_path):
    made, kept, written = tmp_path / "made", tmp_path / "kept", tmp_path / "written"
    kept.mkdir()
    with RunLock(made), RunLock(kept), RunLock(written):
        assert (made / LOCK_NAME).exists()
        (written / "config.json").write_text("{}")
    assert not made.exists()
    assert kept.is_dir() and not list(kept.iterdir())  # the user's empty folder stays
    assert [p.name for p in written.iterdir()] == ["config.json"]


def test_overwrite_and_resume_dir_together_are_refused(finished, tiny_folder, capsys):
    run, before = finished
    assert main(["train", "--resume", str(run), "--overwrite", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert snapshot(run) == before


def test_overwritten_run_killed_before_it_finishes_resumes_only_itself(finished, tiny_folder):
    """The old bug: the stopped new run's checkpoints were resumed with the old run's metrics."""
    run, _ = finished
    old_id = read_run_id(run)
    trainer = tiny_trainer(tiny_folder, run, overwrite=True, config={"seed": 5, "epochs": 2})
    stop_at(trainer, 5)  # in the second epoch
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    assert read_run_id(run) == trainer.run_id != old_id
    assert json.loads((run / "config.json").read_text())["seed"] == 5
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # the new epoch 1 only

    resumed = resume_trainer(run, progress=False)
    result = resumed.fit()
    assert result.epochs == 2 and [r["epoch"] for r in result.history] == [1, 2]
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2]


HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hfsnet.train.rundir import RunLock
    lock = RunLock(Path(sys.argv[1])).acquire()
    print("locked", flush=True)
    sys.stdin.read()
    lock.release()
""")


@pytest.fixture
def holder(tmp_path):
    """``start(run)``: another process that takes ``run``'s lock and holds it until its stdin
    closes; returns the running Popen."""
    children = []

    def start(run):
        child = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout.readline().strip() == "locked"
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_second_process_on_one_out_is_refused_while_the_first_holds_it(tiny_folder, tmp_path,
                                                                       holder, capsys):
    run = tmp_path / "run"
    child = holder(run)
    assert train_cli(tiny_folder, run) == 2
    err = capsys.readouterr().err
    assert f"{run} is in use by another hfsnet process (pid {child.pid})" in err
    assert list(run.iterdir()) == [run / LOCK_NAME]  # nothing written

    child.stdin.close()  # the first process finishes
    child.wait(timeout=30)
    assert train_cli(tiny_folder, run) == 0


def test_resume_is_refused_while_another_process_holds_the_run(finished, holder, capsys):
    run, before = finished
    child = holder(run)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert f"pid {child.pid}" in capsys.readouterr().err
    child.stdin.close()
    child.wait(timeout=30)
    assert snapshot(run) == before


def test_the_lock_is_checked_again_when_training_starts(tiny_folder, tmp_path):
    """Two runs that passed the early check together: the one that reaches ``fit`` second
    is refused before writing anything."""
    run = tmp_path / "run"
    first, second = (tiny_trainer(tiny_folder, run) for _ in range(2))
    seen = []
    first.step_hooks.append(lambda step, loss: seen.append(json.loads(
        (run / LOCK_NAME).read_text())["pid"]))
    with RunLock(run):
        with pytest.raises(RunDirError, match="in use"):
            second.fit()
    first.fit()
    assert seen and set(seen) == {os.getpid()}  # held during the run ...
    assert not (run / LOCK_NAME).exists()  # ... and released after it


def test_stale_lock_of_a_killed_process_is_taken_over(tiny_folder, tmp_path, holder, capsys):
    run = tmp_path / "run"
    child = holder(run)
    child.kill()  # SIGKILL: the lock file stays, naming a dead pid
    child.wait()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == child.pid
    assert train_cli(tiny_folder, run) == 0
    err = capsys.readouterr().err
    assert f"took over the stale lock {run / LOCK_NAME} left by pid {child.pid}" in err
    assert not (run / LOCK_NAME).exists()


def test_resume_refuses_a_checkpoint_of_another_run(tiny_folder, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_cli(tiny_folder, a, "--checkpoint-every", "1") == 0
    assert train_cli(tiny_folder, b, "--checkpoint-every", "1", "--epochs", "2") == 0
    foreign = CheckpointStore(b).step_files()[-1]  # step 8, newer than a's step 4
    shutil.copy(foreign, a / "checkpoints" / foreign.name)
    before = snapshot(a)
    capsys.readouterr()
    assert main(["train", "--resume", str(a), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"saved by run {read_run_id(b)}" in err and f"names run {read_run_id(a)}" in err
    assert snapshot(a) == before


def test_stray_names_in_checkpoints_are_ignored(finished, tiny_folder):
    run, _ = finished
    store = CheckpointStore(run)
    ours = [p.name for p in store.step_files()]
    assert ours == ["step-000000002.safetensors", "step-000000004.safetensors"]
    newest = store.step_files()[-1]
    shutil.copy(newest, store.step_dir / "step-000000004 (copy).safetensors")
    shutil.copy(newest, store.step_dir / "step-9.safetensors")
    (store.step_dir / "step-latest.safetensors").write_text("not a checkpoint")
    (store.step_dir / "notes.txt").write_text("keep me")
    assert [p.name for p in store.step_files()] == ours
    assert store.newest_valid().path == newest
    trainer = resume_trainer(run, progress=False)
    assert trainer.global_step == 4
    assert (store.step_dir / "notes.txt").read_text() == "keep me"


def test_the_interrupt_hint_names_a_path_resume_accepts(tiny_folder, tmp_path):
    run = tmp_path / "run"
    trainer = tiny_trainer(tiny_folder, run)
    stop_at(trainer, 2)
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.fit()
    hint = re.search(r"--resume (\S+)$", str(stopped.value)).group(1)
    assert hint == str(run)
    step_file = stopped.value.checkpoint
    assert step_file.parent == run / "checkpoints"
    for path in (hint, run / "checkpoints", step_file, run / "checkpoint.safetensors"):
        resumed = resume_trainer(path, progress=False)
        assert resumed.out_dir == run and resumed.global_step == 3
    assert resumed.fit().epochs == 2


def test_resume_of_a_missing_directory_names_it(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope"), "--quiet"]) == 2
    assert f"--resume {tmp_path / 'nope'}: no such run directory" in capsys.readouterr().err
