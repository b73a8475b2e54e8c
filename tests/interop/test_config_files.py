import importlib.util
import json
import re
import sys

import pytest

from hfsnet.cli import main
from hfsnet.data import DataError
from hfsnet.interop.config_files import ConfigFileError, read_config_file
from hfsnet.interop.training import train_config
from hfsnet.train import TrainConfig
from hfsnet.train.config import ConfigError

YAML = """\
# a learning rate written the usual way: YAML 1.1 would read it as a string
lr: 1e-3
epochs: 4
model: hfs
model_options:
  stages: [1, 1]
  growth: 8
flip: false
data: some/folder
"""

needs_yaml = pytest.mark.skipif(importlib.util.find_spec("yaml") is None,
                                reason="PyYAML (the yaml extra) is not installed")

TOML = """\
lr = 1e-3
epochs = 4
model = "hfs"
flip = false
data = "some/folder"

[model_options]
stages = [1, 1]
growth = 8
"""


@pytest.mark.parametrize("name,text", [
    pytest.param("run.yaml", YAML, marks=needs_yaml),
    pytest.param("run.yml", YAML, marks=needs_yaml),
    ("run.toml", TOML),
])
def test_yaml_and_toml_give_the_same_values(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    values = read_config_file(path)
    assert values == {
        "lr": 0.001, "epochs": 4, "model": "hfs", "flip": False, "data": "some/folder",
        "model_options": {"stages": [1, 1], "growth": 8},
    }
    assert type(values["lr"]) is float and type(values["epochs"]) is int


@needs_yaml
def test_flags_override_the_file_and_options_merge_key_by_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    config = train_config(path, None, {"epochs": 2, "lr": None, "model_options": {"growth": 4}},
                          share_layers=None)
    assert config.epochs == 2  # the flag
    assert config.lr == 0.001  # the file; None means the flag was not given
    assert config.model_options == {"stages": [1, 1], "growth": 4}
    assert config.recipe == "default"
    assert config.batch_size == TrainConfig().batch_size  # neither: the default


def test_recipe_then_file_then_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('recipe = "seed"\nbatch_size = 8\ndata = "d"\n')
    config = train_config(path, None)
    assert config.recipe == "seed"
    assert config.optimizer == "adam" and config.lr == 2e-4  # from the seed recipe
    assert config.batch_size == 8  # the file beats the recipe
    assert train_config(path, None, {"batch_size": 16}).batch_size == 16  # a flag beats the file
    assert train_config(path, "default").optimizer == TrainConfig().optimizer  # --recipe wins


def test_a_run_config_json_reproduces_the_config(tmp_path):
    original = train_config(None, "seed",
                            {"data": "d", "epochs": 5, "model_options": {"growth": 4}})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(original.to_dict(), indent=2))  # what Trainer.fit writes
    assert train_config(path, None) == original


def test_data_comes_from_flag_then_file_then_environment(tmp_path, monkeypatch):
    path = tmp_path / "run.toml"
    path.write_text('data = "from-file"\n')
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    monkeypatch.setenv("HFSNET_DATA", "from-env")
    assert train_config(path, None, {"data": "from-flag"}).data == "from-flag"
    assert train_config(path, None).data == "from-file"
    assert train_config(empty, None).data == "from-env"
    monkeypatch.delenv("HFSNET_DATA")
    with pytest.raises(DataError, match="--data: no dataset given"):
        train_config(empty, None)


@pytest.mark.parametrize("text,message", [
    ("epoch: 3\n", "unknown config key 'epoch'"),
    ("epochs: three\n", "config key 'epochs': expected <class 'int'>, got 'three'"),
    ("flip: 1\n", "config key 'flip': expected <class 'bool'>, got 1"),
    ("model_options: [1]\n", "config key 'model_options'"),
])
@needs_yaml
def test_bad_keys_and_types_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"--config {path}: {message}"):
        read_config_file(path)


@pytest.mark.parametrize("text,message", [
    ("lr = inf\n", "config key 'lr' must be a finite number, got inf"),
    ("seed = -1\n", "config key 'seed' must be in [0, 2**63), got -1"),
    ("eval_batch_size = 0\n", "config key 'eval_batch_size' must be >= 1, got 0"),
    ('optimizer = "lbfgs"\n', "config key 'optimizer' must be one of"),
])
def test_values_out_of_range_are_named_with_the_file(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"--config {path}: {message}")):
        read_config_file(path)


@pytest.mark.parametrize("name,text,message", [
    ("run.ini", "", "unknown file type '.ini'"),
    pytest.param("run.yaml", "- 1\n- 2\n", "expected a mapping of config keys, got list",
                 marks=needs_yaml),
    pytest.param("run.yaml", "lr: [1\n", "not valid YAML", marks=needs_yaml),
    ("run.toml", "lr = \n", "not valid TOML"),
    ("run.json", "{", "not valid JSON"),
])
def test_unreadable_files_are_named(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=f"--config {path}: {message}"):
        read_config_file(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigFileError, match="missing.yaml: cannot read it"):
        read_config_file(tmp_path / "missing.yaml")


def test_yaml_without_pyyaml_says_how_to_get_it(tmp_path, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    with pytest.raises(ConfigFileError, match=r"needs PyYAML; install it with .*hfsnet\[yaml\]"):
        read_config_file(path)


def test_cli_trains_from_a_config_file_and_reproduces_a_run_from_its_config_json(
        tiny_folder, tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text(f'model = "hfs"\ndata = "{tiny_folder}"\nepochs = 2\nbatch_size = 16\n'
                    'precision = "fp32"\n[model_options]\nstages = [1, 1]\ngrowth = 4\n')
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "--config", str(path), "--epochs", "1", "--out", str(first),
                 "--quiet"]) == 0
    saved = json.loads((first / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["model_options"] == {"stages": [1, 1], "growth": 4}
    assert main(["train", "--config", str(first / "config.json"), "--out", str(second),
                 "--quiet"]) == 0
    assert json.loads((second / "config.json").read_text()) == saved
    results = [json.loads((run / "result.json").read_text()) for run in (first, second)]
    assert results[0]["history"][0]["train_loss"] == results[1]["history"][0]["train_loss"]
    capsys.readouterr()


def test_cli_names_a_bad_key_of_the_config_file(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text("epoch = 3\n")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    assert f"--config {path}: unknown config key 'epoch'" in capsys.readouterr().err
