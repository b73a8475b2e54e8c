import json

import pytest
from PIL import Image

from hfsnet.cli import main
from tests.helpers import last_json, tiny_hfs_flags

SMALL = [*tiny_hfs_flags(), "--epochs", "3", "--batch-size", "16", "--lr", "0.003",
         "--precision", "fp32", "--quiet"]


def test_models_lists_registry(capsys):
    assert main(["models", "--json"]) == 0
    names = [m["name"] for m in last_json(capsys)["models"]]
    assert "hfs-seed" in names and "seed-cnn" in names


def test_train_evaluate_predict_end_to_end(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), "--json", *SMALL]) == 0
    trained = last_json(capsys)
    assert {"test_acc", "params", "train_seconds", "images_per_second"} <= set(trained)
    assert trained["test_acc"] > 0.6

    assert main(["evaluate", "--checkpoint", str(run), "--data", str(tiny_folder),
                 "--json"]) == 0
    evaluated = last_json(capsys)
    assert evaluated["test_acc"] == pytest.approx(trained["test_acc"])
    assert set(evaluated["per_class_acc"]) == {"circle", "square", "stripe"}
    assert sum(map(sum, evaluated["confusion"])) == 18

    # A larger, differently sized image of the "square" class (green-dominant).
    big = tmp_path / "big.jpg"
    Image.new("RGB", (50, 40), (20, 220, 30)).save(big)
    assert main(["predict", "--checkpoint", str(run), str(big), "--top-k", "2", "--json"]) == 0
    (prediction,) = last_json(capsys)["predictions"]
    assert len(prediction["top"]) == 2
    assert prediction["top"][0]["class"] == "square"
    assert prediction["top"][0]["prob"] >= prediction["top"][1]["prob"]


def test_data_from_environment(tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HFSNET_DATA", str(tiny_folder))
    assert main(["train", "--out", str(tmp_path / "r"), "--json", *SMALL,
                 "--epochs", "1"]) == 0
    assert "test_acc" in last_json(capsys)


# Values out of range stop at parse time: tests/cli/test_config_flags.py.
@pytest.mark.parametrize("argv,message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--config", "missing.toml"], "--config missing.toml: cannot read it"),
])
def test_bad_flags_exit_2_with_one_line(tiny_folder, tmp_path, capsys, argv, message):
    code = main(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_missing_data_path_exit_2(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_missing_data_flag_exit_2(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err


def test_evaluate_refuses_other_class_set(tiny_folder, tmp_path, capsys, make_image_folder):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *SMALL,
                 "--epochs", "1"]) == 0
    other = make_image_folder(tmp_path / "other", classes=("cat", "dog", "eel"))
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(other)]) == 2
    assert "classes" in capsys.readouterr().err


def test_debug_shows_traceback(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "x"), "--out", str(tmp_path), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_speed_flags_reach_the_saved_config(tiny_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *SMALL, "--epochs",
                 "1", "--threads", "1", "--ema-decay", "0.9", "--tta-flip"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["threads"], saved["ema_decay"], saved["tta_flip"]) == (1, 0.9, True)


@pytest.mark.parametrize("command", [["evaluate"], ["predict", "x.jpg"], ["cache"], ["fit-head"]])
def test_threads_flag_sets_torch_threads_before_the_command(command, tmp_path, monkeypatch,
                                                            capsys):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    missing = str(tmp_path / "missing")
    extra = ["--out", missing] if command == ["fit-head"] else []
    assert main([*command, "--checkpoint", missing, *extra, "--threads", "1"]) == 2
    assert calls == [1]
    assert "missing" in capsys.readouterr().err


def test_threads_flag_rejects_zero(capsys):
    assert main(["evaluate", "--checkpoint", "x", "--threads", "0"]) == 2
    assert "--threads: expected an integer >= 1, got '0'" in capsys.readouterr().err
