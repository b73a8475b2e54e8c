import json
import sys

import pytest
import torch

from hfsnet.cli import main
from hfsnet.interop.tblog import CELL_PX, LogError, confusion_image, confusion_table
from hfsnet.interop.training import train_with_log
from hfsnet.train import TrainConfig
from tests.helpers import tiny_hfs_flags

SMALL = [*tiny_hfs_flags(), "--batch-size", "16", "--lr", "0.003", "--precision", "fp32",
         "--quiet"]


def test_confusion_image_shows_each_true_class_row_normalised():
    image = confusion_image([[3, 1], [0, 2]])
    assert image.shape == (3, 2 * CELL_PX, 2 * CELL_PX) and image.dtype == torch.uint8
    cells = image[0, ::CELL_PX, ::CELL_PX]
    assert cells.tolist() == [[191, 64], [0, 255]]  # 255 * [[3/4, 1/4], [0/2, 2/2]], rounded
    assert torch.equal(image[0], image[2])  # grey
    assert confusion_image([[0, 0], [0, 5]])[0, 0, 0] == 0  # an empty row stays black


def test_confusion_table_is_markdown():
    assert confusion_table([[3, 1], [0, 2]], ["cat", "dog"]).splitlines() == [
        "| true \\ predicted | cat | dog |", "|---|---|---|", "| cat | 3 | 1 |", "| dog | 0 | 2 |"]


def test_missing_tensorboard_is_a_clear_error_before_training(tiny_folder, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), "--epochs", "1",
                 "--log", "tensorboard", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "--log tensorboard: the tensorboard package is not installed" in err
    assert "hfsnet[tensorboard]" in err
    assert not run.exists()


def test_an_unknown_log_kind_is_refused():
    with pytest.raises(LogError, match="--log must be one of"):
        train_with_log(TrainConfig(data="unused"), "unused", log="wandb")


def test_log_with_resume_is_refused(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--log", "tensorboard"]) == 2
    assert "--log tensorboard: not available with --resume" in capsys.readouterr().err


def read_events(log_dir):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events


def test_tensorboard_log_matches_the_metrics(tiny_folder, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), "--epochs", "2",
                 "--log", "tensorboard", *SMALL]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = read_events(run / "tensorboard")
    tags = events.Tags()
    for tag, key in [("accuracy/test", "test_acc"), ("loss/train", "train_loss"),
                     ("lr/epoch_end", "lr"), ("speed/images_per_second", "images_per_second")]:
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(row["epoch"], pytest.approx(row[key], rel=1e-6)) for row in metrics]
    steps = [e.step for e in events.Scalars("loss/train_step")]
    assert steps == list(range(2 * (72 // 16)))  # 72 images, batches of 16, last one dropped
    assert "test/confusion" in tags["images"]
    (image,) = events.Images("test/confusion")
    assert (image.height, image.width) == (3 * CELL_PX, 3 * CELL_PX)  # 3 classes
