import json

import pytest

from hfsnet.cli import main
from hfsnet.interop.runs import format_seconds
from tests.helpers import last_json


def write_run(path, *, model, recipe="default", epochs=3, result=None, metrics=()):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": model, "recipe": recipe,
                                                  "epochs": epochs}))
    if result is not None:
        (path / "result.json").write_text(json.dumps(result))
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "a", model="hfs", result={"epochs": 3, "test_acc": 0.80,
                                               "train_seconds": 125.0, "params": 1500})
    write_run(root / "sweep" / "b", model="seed-cnn", recipe="seed", epochs=20,
              result={"epochs": 20, "test_acc": 0.91, "train_seconds": 7300.0,
                      "params": 890410})
    # Still training: two epochs done, the third line half written.
    write_run(root / "c", model="mynets:resnet", epochs=10,
              metrics=[{"epoch": 1, "seconds": 10.0, "test_acc": 0.5},
                       {"epoch": 2, "seconds": 12.5, "test_acc": 0.6}])
    with (root / "c" / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 3, "sec')
    write_run(root / "d", model="hfs", metrics=[])  # started, no epoch finished yet
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    return root


def listing(capsys, *argv):
    assert main(["runs", *map(str, argv), "--json"]) == 0
    return last_json(capsys)


def test_runs_are_found_recursively_with_finished_and_partial_ones(runs_dir, capsys):
    out = listing(capsys, runs_dir)
    rows = {row["run"]: row for row in out["runs"]}
    assert list(rows) == ["a", "c", "d", "sweep/b"]  # sorted by run by default
    assert rows["sweep/b"] == {"run": "sweep/b", "model": "seed-cnn", "recipe": "seed",
                               "epochs": 20, "planned": 20, "test_acc": 0.91, "time": 7300.0,
                               "params": 890410, "status": "done"}
    assert rows["c"]["epochs"] == 2 and rows["c"]["planned"] == 10
    assert rows["c"]["test_acc"] == 0.6 and rows["c"]["time"] == 22.5
    assert rows["c"]["status"] == "partial" and rows["c"]["params"] is None
    assert rows["d"]["test_acc"] is None and rows["d"]["time"] is None
    (skipped,) = out["skipped"]
    assert "broken" in skipped and "JSONDecodeError" in skipped


def test_sorting_puts_missing_values_last_either_way(runs_dir, capsys):
    ascending = [row["run"] for row in listing(capsys, runs_dir, "--sort", "test_acc")["runs"]]
    assert ascending == ["c", "a", "sweep/b", "d"]
    descending = [row["run"] for row in
                  listing(capsys, runs_dir, "--sort", "test_acc", "--reverse")["runs"]]
    assert descending == ["sweep/b", "a", "c", "d"]
    by_epochs = [row["run"] for row in listing(capsys, runs_dir, "--sort", "epochs")["runs"]]
    assert by_epochs == ["d", "c", "a", "sweep/b"]


def test_table_output(runs_dir, capsys):
    assert main(["runs", str(runs_dir), "--sort", "time", "--reverse"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["run", "model", "recipe", "epochs", "test_acc", "time",
                                "params", "status"]
    assert lines[1].split() == ["sweep/b", "seed-cnn", "seed", "20/20", "91.00%", "2h01m",
                                "890,410", "done"]
    assert lines[2].split() == ["a", "hfs", "default", "3/3", "80.00%", "2m05s", "1,500",
                                "done"]
    assert lines[3].split() == ["c", "mynets:resnet", "default", "2/10", "60.00%", "22.5s",
                                "-", "partial"]
    assert lines[4].split() == ["d", "hfs", "default", "0/3", "-", "-", "-", "partial"]
    assert "skipped" in captured.err and "broken" in captured.err


def test_an_empty_folder_and_a_missing_one(tmp_path, capsys):
    assert main(["runs", str(tmp_path)]) == 0
    assert f"no runs under {tmp_path}" in capsys.readouterr().out
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("seconds,text", [(0.04, "0.0s"), (59.94, "59.9s"), (60, "1m00s"),
                                          (3599, "59m59s"), (3600, "1h00m"),
                                          (90061, "25h01m")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text
