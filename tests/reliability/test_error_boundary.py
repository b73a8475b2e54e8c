"""Hostile input through ``hfsnet.cli.main``: every refusal is exit 2 and one stderr line
``hfsnet: error: ...`` naming the flag or path, never a traceback; failed writes leave the
previous files byte-identical."""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from hfsnet import fsutil
from hfsnet.cli import main
from hfsnet.train.checkpoint import load_checkpoint
from tests.conftest import write_image_folder
from tests.helpers import last_json, tiny_hfs_flags

SMALL = [*tiny_hfs_flags(), "--epochs", "1", "--batch-size", "16", "--precision", "fp32",
         "--quiet"]
# Names a folder can carry on Linux that would recolour the terminal or forge a line.
HOSTILE_CLASS = "red\x1b[31m\nhfsnet: error: forged"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"


def error_line(capsys) -> str:
    """The one error line of a refused command (and no traceback); warnings may come first."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("hfsnet: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("hfsnet: error: "), err
    return lines[0]


def refused(argv: list[str], capsys) -> str:
    capsys.readouterr()
    code = main(argv)
    line = error_line(capsys)
    assert code == 2, line
    return line


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".hfsnet.lock"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory) -> Path:
    """A finished tiny run (never modified by the tests that read it)."""
    out = tmp_path_factory.mktemp("run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HFSNET_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(["train", "--data", str(folder), "--out", str(out), *SMALL]) == 0
    return out


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- flags refused while parsing, or before anything is loaded ---------------------------------

TRAIN_FLAGS = [
    (["--device", "cuda"], "--device cuda"),
    (["--model-opt", "activation=bogus"], "activation"),
    (["--threads", "-1"], "--threads"),
    (["--momentum", "-1"], "--momentum"),
    (["--seed", "-5"], "--seed"),
    (["--seed", "99999999999999999999999"], "--seed"),
    (["--image-size", "1"], "--image-size"),
]


@pytest.mark.parametrize("flags,named", TRAIN_FLAGS, ids=[" ".join(f) for f, _ in TRAIN_FLAGS])
def test_train_refuses_bad_flags(folder, tmp_path, capsys, no_gpu, flags, named):
    out = tmp_path / "r"
    line = refused(["train", "--data", str(folder), "--out", str(out), *SMALL, *flags], capsys)
    assert named in line
    assert not out.exists() or snapshot(out) == {}


def test_train_refuses_a_bad_model_option_from_a_config_file(folder, tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text('{"model": "hfs", "model_options": {"activation": "bogus"}}')
    line = refused(["train", "--config", str(config), "--data", str(folder), "--out",
                    str(tmp_path / "r"), "--epochs", "1", "--quiet"], capsys)
    assert "activation" in line and "bogus" in line


def test_evaluate_and_cache_refuse_a_missing_gpu(run, folder, tmp_path, capsys, no_gpu):
    line = refused(["evaluate", "--checkpoint", str(run), "--data", str(folder),
                    "--device", "cuda"], capsys)
    assert "--device cuda" in line
    line = refused(["cache", "--checkpoint", str(run), "--data", str(folder), "--device", "cuda",
                    "--cache", str(tmp_path / "c")], capsys)
    assert "--device cuda" in line
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("command,flags,named", [
    ("evaluate", ["--threads", "-1"], "--threads"),
    ("evaluate", ["--batch-size", "0"], "--batch-size"),
    ("fit-head", ["--batch-size", "0"], "--batch-size"),
    ("fit-head", ["--cache-batch-size", "0"], "--cache-batch-size"),
    ("fit-head", ["--seed", "-5"], "--seed"),
])
def test_inference_commands_refuse_bad_numbers(run, folder, tmp_path, capsys, command, flags,
                                               named):
    out = ["--out", str(tmp_path / "head")] if command == "fit-head" else []
    line = refused([command, "--checkpoint", str(run), "--data", str(folder), *out, *flags],
                   capsys)
    assert named in line
    assert not (tmp_path / "head").exists()


@pytest.mark.parametrize("k", ["-1", "0", "x"])
def test_predict_refuses_a_non_positive_top_k(run, folder, capsys, k):
    image = next((folder / "test" / "circle").glob("*.png"))
    line = refused(["predict", "--checkpoint", str(run), str(image), "--top-k", k], capsys)
    assert "--top-k" in line


def test_predict_clamps_top_k_to_the_class_count_with_a_note(run, folder, capsys):
    image = next((folder / "test" / "circle").glob("*.png"))
    assert main(["predict", "--checkpoint", str(run), str(image), "--top-k", "50",
                 "--json"]) == 0
    captured = capsys.readouterr()
    (prediction,) = json.loads(captured.out.splitlines()[-1])["predictions"]
    assert sorted(entry["class"] for entry in prediction["top"]) == ["circle", "square", "stripe"]
    assert "--top-k 50" in captured.err and "3 classes" in captured.err


CONFIG_FILES = [
    pytest.param("random.json", b"\xff\xfe" + os.urandom(512)),
    pytest.param("random.toml", b"\x00\x9f\xff" + os.urandom(256)),
    pytest.param("random.yaml", b"\xff\xd8\xff\xe0" + os.urandom(256)),
    pytest.param("image.json", PNG_MAGIC + os.urandom(64)),
    pytest.param("image.png", PNG_MAGIC + os.urandom(64)),
]


@pytest.mark.parametrize("name,content", CONFIG_FILES)
def test_a_binary_config_file_is_refused(folder, tmp_path, capsys, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    line = refused(["train", "--config", str(path), "--data", str(folder), "--out",
                    str(tmp_path / "r"), "--quiet"], capsys)
    assert f"--config {path}" in line
    assert not (tmp_path / "r").exists()


def test_out_naming_a_file_is_refused(run, folder, tmp_path, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_bytes(b"keep me")
    for argv in (["train", "--data", str(folder), *SMALL],
                 ["fit-head", "--checkpoint", str(run), "--data", str(folder)]):
        line = refused([*argv, "--out", str(taken)], capsys)
        assert str(taken) in line
        assert taken.read_bytes() == b"keep me"


def test_export_refuses_a_directory_and_a_path_under_a_file(run, tmp_path, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_bytes(b"keep me")
    (tmp_path / "dir").mkdir()
    for out in (tmp_path / "dir", taken / "model.pt"):
        line = refused(["export", "--checkpoint", str(run), "--format", "torchscript",
                        "--out", str(out)], capsys)
        assert str(out) in line
    assert taken.read_bytes() == b"keep me"
    assert list((tmp_path / "dir").iterdir()) == []


ABSURD_INPUTS = ["3x100000x100000", "0x32x32", "3x1x1", "abc", "3x32", "-3x32x32", "3x32x32x3",
                 "1x20000x20000"]


@pytest.mark.parametrize("command", ["summary", "layers"])
@pytest.mark.parametrize("text", ABSURD_INPUTS)
def test_absurd_input_shapes_are_refused_before_allocating(capsys, command, text):
    extra = ["--no-memory"] if command == "summary" else []
    line = refused([command, "hfs-seed", f"--input={text}", *extra], capsys)
    assert "--input" in line and repr(text) in line


def test_the_size_bound_names_the_number(capsys):
    line = refused(["summary", "hfs-seed", "--input", "3x100000x100000", "--no-memory"], capsys)
    assert "30,000,000,000" in line and "100,000,000" in line
    # Each image fits, the batch does not.
    line = refused(["summary", "hfs-seed", "--input", "3x4000x4000", "--batch-size", "3",
                    "--no-memory"], capsys)
    assert "--batch-size 3" in line and "144,000,000" in line


def test_the_smallest_and_largest_accepted_sides_work(capsys):
    assert main(["layers", "hfs-seed", "--input", "3x8x8", "--json"]) == 0
    assert last_json(capsys)["input"] == [3, 8, 8]
    line = refused(["layers", "hfs-seed", "--input", "1x5000x5000"], capsys)
    assert "in [8, 4096]" in line


# --- the operating system refusing a write -----------------------------------------------------

def fail_atomic_writes(monkeypatch, code: int) -> None:
    """Every temporary file of the atomic writer fails as a full or read-only disk would."""
    def mkstemp(*args, **kwargs):
        raise OSError(code, os.strerror(code), kwargs.get("dir"))
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


class _FullDisk:
    """A file whose writes fail; everything else goes to the real file."""

    def __init__(self, file, code: int, path: str) -> None:
        self._file, self._code, self._path = file, code, path

    def write(self, data):
        raise OSError(self._code, os.strerror(self._code), self._path)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


def fail_writes_to(monkeypatch, name: str, code: int) -> None:
    """Writing a file called ``name``, directly or through the atomic writer's temporary for it,
    fails after the file was opened (so a plain write has already truncated it), as on a full
    disk; every other file is written."""
    real_open = io.open

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        path = (os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int)
                else os.fspath(file))
        base = Path(path).name
        if any(c in mode for c in "wax+") and (base == name or base.startswith(f".{name}.")):
            return _FullDisk(handle, code, path)
        return handle
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr("builtins.open", open_)


def fail_fsync(monkeypatch, code: int) -> None:
    """The data reaches the page cache but not the disk (ENOSPC surfaces at fsync)."""
    def fsync(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(fsutil.os, "fsync", fsync)


@pytest.fixture
def head_run(run, folder, tmp_path) -> Path:
    out = tmp_path / "head"
    assert main(["fit-head", "--checkpoint", str(run), "--data", str(folder), "--out",
                 str(out), "--cache", str(tmp_path / "cache")]) == 0
    return out


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
@pytest.mark.parametrize("failure", [fail_atomic_writes, fail_fsync])
def test_export_failing_to_write_keeps_the_previous_file(run, tmp_path, capsys, monkeypatch,
                                                          failure, code):
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(run), "--format", "torchscript",
                 "--out", str(out)]) == 0
    before = snapshot(tmp_path)
    failure(monkeypatch, code)
    line = refused(["export", "--checkpoint", str(run), "--format", "torchscript",
                    "--out", str(out)], capsys)
    assert str(out) in line and os.strerror(code) in line
    assert snapshot(tmp_path) == before


def test_export_to_a_full_disk_keeps_the_previous_file(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(run), "--format", "torchscript",
                 "--out", str(out)]) == 0
    before = snapshot(tmp_path)
    fail_writes_to(monkeypatch, "model.pt", errno.ENOSPC)
    line = refused(["export", "--checkpoint", str(run), "--format", "torchscript",
                    "--out", str(out)], capsys)
    assert str(out) in line and "No space left on device" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", [
    "checkpoint.safetensors",
    "result.json",
])
def test_fit_head_on_a_full_disk_keeps_the_previous_files(run, folder, head_run, tmp_path,
                                                          capsys, monkeypatch, name):
    before = snapshot(head_run)
    fail_writes_to(monkeypatch, name, errno.ENOSPC)
    line = refused(["fit-head", "--checkpoint", str(run), "--data", str(folder), "--out",
                    str(head_run), "--cache", str(tmp_path / "cache"), "--method", "sgd",
                    "--epochs", "1"], capsys)
    assert str(head_run / name) in line and "No space left on device" in line
    assert snapshot(head_run) == before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
@pytest.mark.parametrize("failure", [fail_atomic_writes, fail_fsync])
def test_fit_head_failing_to_write_keeps_the_previous_files(run, folder, head_run, tmp_path,
                                                            capsys, monkeypatch, failure, code):
    before = snapshot(head_run)
    failure(monkeypatch, code)
    line = refused(["fit-head", "--checkpoint", str(run), "--data", str(folder), "--out",
                    str(head_run), "--cache", str(tmp_path / "cache"), "--method", "sgd",
                    "--epochs", "1"], capsys)
    assert str(head_run) in line and os.strerror(code) in line
    assert snapshot(head_run) == before


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_train_into_a_read_only_directory(folder, tmp_path, capsys, monkeypatch, code):
    parent = tmp_path / "readonly"
    parent.mkdir()

    def mkdir(self, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(self))
    monkeypatch.setattr(Path, "mkdir", mkdir)
    line = refused(["train", "--data", str(folder), "--out", str(parent / "r"), *SMALL], capsys)
    assert str(parent / "r") in line and os.strerror(code) in line
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_resume_failing_to_write_keeps_the_run(folder, tmp_path, capsys, monkeypatch, code):
    out = tmp_path / "r"
    assert main(["train", "--data", str(folder), "--out", str(out), *SMALL]) == 0
    before = snapshot(out)
    fail_atomic_writes(monkeypatch, code)
    line = refused(["train", "--resume", str(out), "--epochs", "2", "--quiet"], capsys)
    assert str(out) in line and os.strerror(code) in line
    assert snapshot(out) == before


# --- export must not destroy the run it reads --------------------------------------------------

RUN_OWNED = ["checkpoint.safetensors", "config.json", "metrics.jsonl", "result.json", "run.json",
             "checkpoints/new.pt"]


@pytest.mark.parametrize("name", RUN_OWNED)
def test_export_refuses_to_overwrite_files_of_a_run(run, capsys, name):
    before = snapshot(run)
    line = refused(["export", "--checkpoint", str(run), "--format", "torchscript",
                    "--out", str(run / name)], capsys)
    assert "--out" in line and str(run / name) in line
    assert snapshot(run) == before


def test_export_refuses_the_source_checkpoint_through_a_link(run, tmp_path, capsys):
    ckpt = run / "checkpoint.safetensors"
    alias = tmp_path / "alias.safetensors"
    alias.symlink_to(ckpt)
    before = ckpt.read_bytes()
    line = refused(["export", "--checkpoint", str(ckpt), "--format", "torchscript",
                    "--out", str(alias)], capsys)
    assert "--out" in line and "checkpoint" in line
    assert ckpt.read_bytes() == before


def test_export_beside_a_run_is_fine(run, capsys):
    out = run / "model.pt"
    try:
        assert main(["export", "--checkpoint", str(run), "--format", "torchscript",
                     "--out", str(out), "--json"]) == 0
        assert last_json(capsys)["out"] == str(out)
        assert torch.jit.load(str(out)) is not None
    finally:
        out.unlink(missing_ok=True)


# --- names from files reach the terminal escaped -----------------------------------------------

@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> tuple[Path, Path]:
    data = write_image_folder(tmp_path_factory.mktemp("hostile") / "data",
                              classes=("circle", HOSTILE_CLASS, "stripe"))
    out = tmp_path_factory.mktemp("hostile-run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HFSNET_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(["train", "--data", str(data), "--out", str(out), *SMALL]) == 0
    return data, out


def assert_escaped(text: str) -> None:
    assert "\x1b" not in text and "\nhfsnet: error: forged" not in text
    assert r"red\x1b[31m\nhfsnet: error: forged" in text


def test_evaluate_and_predict_escape_class_names(hostile_run, capsys):
    data, out = hostile_run
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data)]) == 0
    assert_escaped(capsys.readouterr().out)
    image = next((data / "test" / "circle").glob("*.png"))
    assert main(["predict", "--checkpoint", str(out), str(image), "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert_escaped(printed)
    assert len(printed.splitlines()) == 1


def test_json_output_keeps_class_names_raw(hostile_run, capsys):
    data, out = hostile_run
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--json"]) == 0
    assert HOSTILE_CLASS in last_json(capsys)["classes"]


def test_error_lines_escape_names_from_files(hostile_run, folder, capsys):
    _, out = hostile_run
    line = refused(["evaluate", "--checkpoint", str(out), "--data", str(folder)], capsys)
    assert_escaped(line)


def test_a_checkpoint_loads_after_every_refusal(run):
    assert load_checkpoint(run).meta["classes"] == ["circle", "square", "stripe"]
