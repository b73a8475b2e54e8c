import json

import pytest
import torch

from hfsnet.cli import main
from hfsnet.data import load_dataset, normalize
from hfsnet.interop.user_models import model_from_checkpoint, register_user_model
from hfsnet.models import create_model
from hfsnet.models.share import SharedClassifier
from hfsnet.train.checkpoint import CheckpointError, load_checkpoint
from tests.helpers import last_json

RESNET = "hfsnet_test_usernets:tiny_resnet"
FAST = ["--epochs", "1", "--batch-size", "16", "--precision", "fp32", "--quiet"]


def test_a_user_network_trains_from_the_cli(shared_run):
    run, result = shared_run
    assert result["test_acc"] > 0.6  # 3 classes: chance is 0.33
    meta = load_checkpoint(run).meta
    assert meta["model"] == RESNET
    assert meta["model_options"]["share_layers"] == ["layer1", "layer2"]
    assert meta["model_options"]["width"] == 6  # went to the factory
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == RESNET


def test_its_checkpoint_needs_the_factory_named_again(shared_run, tiny_folder):
    run, result = shared_run
    ckpt = load_checkpoint(run)
    with pytest.raises(CheckpointError, match=f"pass --model {RESNET} to rebuild it"):
        model_from_checkpoint(ckpt)
    model = model_from_checkpoint(ckpt, RESNET).eval()
    assert isinstance(model, SharedClassifier)
    assert model.stage_channels() == [6, 12]
    data = load_dataset(str(tiny_folder))
    with torch.no_grad():
        logits = model(normalize(data.test.images, ckpt.meta["mean"], ckpt.meta["std"]))
    acc = (logits.argmax(1) == data.test.labels).float().mean().item()
    assert acc == pytest.approx(result["test_acc"])


def test_a_registered_model_checkpoint_refuses_a_factory(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "hfs", "--model-opt", "stages=[1]", "--model-opt",
                 "growth=4", "--data", str(tiny_folder), "--out", str(run), "--epochs", "1",
                 "--quiet"]) == 0
    with pytest.raises(CheckpointError, match="needs no --model"):
        model_from_checkpoint(load_checkpoint(run), RESNET)
    assert model_from_checkpoint(load_checkpoint(run)).model_name == "hfs"


def test_the_registry_builds_a_user_network_like_any_model(usernets):
    register_user_model(RESNET)
    model = create_model(RESNET, num_classes=4, image_size=16, share_layers="layer1,layer2",
                         share_fuse="last", share_proj=0)
    assert model.model_name == RESNET
    assert model.num_features == 16 and model.num_classes == 4


def test_layers_lists_tappable_names_and_shapes(usernets, capsys):
    assert main(["layers", RESNET, "--input", "3x16x16", "--model-opt", "width=4",
                 "--json"]) == 0
    out = last_json(capsys)
    rows = {row["name"]: row for row in out["layers"]}
    assert rows["layer1"] == {"name": "layer1", "type": "Block", "shape": [4, 16, 16]}
    assert rows["layer2"]["shape"] == [8, 8, 8]
    assert rows["fc"]["shape"] == [7]
    assert main(["layers", RESNET]) == 0
    table = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["layer2", "Block", "16x16x16"] for line in table)


def test_layers_of_a_registered_model(capsys):
    assert main(["layers", "hfs", "--model-opt", "stages=[1,1]", "--model-opt", "growth=4",
                 "--model-opt", "stem=4", "--json"]) == 0
    rows = {row["name"]: row["shape"] for row in last_json(capsys)["layers"]}
    assert rows["blocks.0"] == [4, 16, 16]  # stem 4 + 1 layer x 4, compressed by half, pooled
    assert rows["blocks.1"] == [8, 16, 16]


@pytest.mark.parametrize("argv,message", [
    (["--model", "no_such_module_xyz:build", "--share-layers", "a"],
     "cannot import module 'no_such_module_xyz'"),
    (["--model", "hfsnet_test_usernets:nothere", "--share-layers", "a"],
     "module 'hfsnet_test_usernets' has no 'nothere'"),
    (["--model", "hfsnet_test_usernets:not_a_network", "--share-layers", "a"],
     "the factory returned int, expected a torch.nn.Module"),
    (["--model", RESNET], f"model {RESNET} needs layers to tap; list them with `hfsnet "
                          f"layers {RESNET}`"),
    (["--model", RESNET, "--share-layers", "layer1,layer3"],
     "no layer named 'layer3' in TinyResNet. Close matches: layer2, layer1"),
    (["--model", RESNET, "--share-layers", "layer1", "--model-opt", "depth=3"],
     "bad option for the factory"),
    (["--model", "a:b:c"], "expected module.path:factory"),
])
def test_bad_user_models_exit_2_with_a_message(usernets, tiny_folder, tmp_path, capsys, argv,
                                               message):
    code = main(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), *argv,
                 *FAST])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("hfsnet: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_a_network_with_control_flow_trains(usernets, tiny_folder, tmp_path, capsys):
    assert main(["train", "--model", "hfsnet_test_usernets:branchy", "--share-layers",
                 "common,deep", "--data", str(tiny_folder), "--out", str(tmp_path / "r"),
                 "--lr", "0.003", "--json", *FAST]) == 0
    result = last_json(capsys)
    assert result["test_acc"] > 0.6  # 3 classes: chance is 0.33


def test_evaluate_and_predict_a_user_network_from_the_cli(shared_run, tiny_folder, capsys):
    run, result = shared_run
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(tiny_folder)]) == 2
    assert f"pass --model {RESNET}" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(tiny_folder),
                 "--model", RESNET, "--json"]) == 0
    assert last_json(capsys)["test_acc"] == pytest.approx(result["test_acc"])
    image = next((tiny_folder / "test" / "square").glob("*.png"))
    assert main(["predict", "--checkpoint", str(run), "--model", RESNET, str(image),
                 "--json"]) == 0
    (prediction,) = last_json(capsys)["predictions"]
    assert prediction["top"][0]["class"] in {"circle", "square", "stripe"}
