import pytest

from hfsnet.cli import main
from hfsnet.train.checkpoint import load_checkpoint
from tests.helpers import last_json

NEW = ("a", "b", "c", "d")


@pytest.fixture
def new_data(tmp_path, make_image_folder):
    return make_image_folder(tmp_path / "new", classes=NEW, per_class=(24, 6), seed=1)


def test_cache_is_built_once_then_reused(source_run, new_data, tmp_path, capsys):
    argv = ["cache", "--checkpoint", str(source_run), "--data", str(new_data),
            "--out", str(tmp_path / "cache"), "--json"]
    assert main(argv) == 0
    first = last_json(capsys)
    assert first["built"] and first["width"] == 8 + 16  # gap over stages of 8 and 16 channels
    assert first["shapes"]["train_features"] == [96, first["width"]]
    assert main(argv) == 0
    again = last_json(capsys)
    assert not again["built"] and again["path"] == first["path"]


def test_ridge_head_checkpoint_evaluates_and_predicts_like_any_other(source_run, new_data,
                                                                     tmp_path, capsys):
    run = tmp_path / "ridge"
    assert main(["fit-head", "--checkpoint", str(source_run), "--data", str(new_data),
                 "--out", str(run), "--method", "ridge", "--json"]) == 0
    fitted = last_json(capsys)
    assert fitted["cache_built"] and fitted["levels"] == [1, 2] and fitted["pool"] == "gap"
    assert fitted["test_acc"] > 0.5  # an untrained trunk, four classes: chance is 0.25
    assert (source_run / "feature-cache").is_dir()  # default root: beside the checkpoint

    assert main(["evaluate", "--checkpoint", str(run), "--data", str(new_data), "--json"]) == 0
    evaluated = last_json(capsys)
    # The head was scored on float16 descriptors, evaluate runs the float32 trunk.
    assert abs(evaluated["test_acc"] - fitted["test_acc"]) <= 1 / 24
    assert evaluated["classes"] == list(NEW)
    ckpt = load_checkpoint(run)
    assert ckpt.meta["mean"] == [0.3] * 3  # the trunk's normalisation, not the new data's
    assert ckpt.meta["head_fit"]["method"] == "ridge"

    image = next((new_data / "test" / "c").iterdir())
    assert main(["predict", "--checkpoint", str(run), str(image), "--json"]) == 0
    top = last_json(capsys)["predictions"][0]["top"]
    assert top[0]["class"] in NEW


def test_sgd_mlp_head_on_chosen_levels(source_run, new_data, tmp_path, capsys):
    run = tmp_path / "sgd"
    assert main(["fit-head", "--checkpoint", str(source_run), "--data", str(new_data),
                 "--out", str(run), "--method", "sgd", "--hidden", "8", "--levels", "last",
                 "--pool", "2x2", "--epochs", "20", "--json"]) == 0
    fitted = last_json(capsys)
    assert fitted["levels"] == [2] and fitted["width"] == 4 * 16
    assert len(fitted["details"]["epoch_seconds"]) == 20
    assert fitted["details"]["train_loss"][-1] < fitted["details"]["train_loss"][0]
    model = load_checkpoint(run).build_model()
    assert model.head.hidden[0].in_features == 4 * 16 and model.num_classes == 4
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(new_data), "--json"]) == 0
    assert abs(last_json(capsys)["test_acc"] - fitted["test_acc"]) <= 1 / 24


def test_evaluate_refuses_data_whose_classes_differ_from_the_head(source_run, new_data,
                                                                  tiny_folder, tmp_path, capsys):
    run = tmp_path / "ridge"
    assert main(["fit-head", "--checkpoint", str(source_run), "--data", str(new_data),
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(tiny_folder)]) == 2
    assert "classes" in capsys.readouterr().err


def test_class_selection_and_per_class_sampling(source_run, new_data, tmp_path, capsys):
    assert main(["cache", "--checkpoint", str(source_run), "--data", str(new_data),
                 "--classes", "d,b", "--per-class", "5", "--json"]) == 0
    shapes = last_json(capsys)["shapes"]
    assert shapes["train_labels"] == [10] and shapes["test_labels"] == [12]


def test_corrupt_cache_fails_until_rebuilt(source_run, new_data, tmp_path, capsys):
    base = ["cache", "--checkpoint", str(source_run), "--data", str(new_data), "--json"]
    assert main(base) == 0
    path = last_json(capsys)["path"]
    with open(f"{path}/test_features.npy", "r+b") as file:
        file.seek(-2, 2)
        file.write(b"\x00\x7c")  # a float16 infinity
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "test_features.npy: checksum mismatch" in err and "--rebuild" in err
    assert main([*base, "--rebuild"]) == 0
    assert last_json(capsys)["built"]


@pytest.mark.parametrize("argv,message", [
    (["fit-head", "--method", "ridge", "--hidden", "4"], "--hidden"),
    (["fit-head", "--levels", "3"], "--levels: stage numbers must lie in 1..2"),
    (["cache", "--classes", "a,zebra"], "zebra"),
])
def test_bad_requests_exit_2_with_one_line(source_run, new_data, tmp_path, capsys, argv,
                                           message):
    out = ["--out", str(tmp_path / "r")] if argv[0] == "fit-head" else []
    code = main([*argv, "--checkpoint", str(source_run), "--data", str(new_data), *out])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_images_of_another_size_are_refused(source_run, tmp_path, make_image_folder, capsys):
    big = make_image_folder(tmp_path / "big", size=20)
    assert main(["cache", "--checkpoint", str(source_run), "--data", str(big)]) == 2
    assert "expects 3x16x16" in capsys.readouterr().err
