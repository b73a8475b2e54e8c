"""Bad input through the CLI: one line naming the file or flag, exit 2, no traceback."""

import pytest

from hfsnet.cli import main
from hfsnet.models import create_model
from hfsnet.train.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import tiny_hfs_flags

SMALL = [*tiny_hfs_flags(), "--epochs", "1", "--batch-size", "16", "--precision", "fp32",
         "--quiet"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("hfsnet: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def broken_folder(tiny_folder):
    bad = tiny_folder / "train" / "circle" / "9999.jpg"
    bad.write_text("this is not an image")
    truncated = tiny_folder / "train" / "square" / "9998.png"
    truncated.write_bytes((tiny_folder / "train" / "square" / "0000.png").read_bytes()[:40])
    return tiny_folder


def test_bad_images_fail_before_training_naming_them(broken_folder, tmp_path, capsys):
    code = main(["train", "--data", str(broken_folder), "--out", str(tmp_path / "r"), *SMALL])
    line = one_error_line(capsys)
    assert code == 2
    assert "9999.jpg" in line and "9998.png" in line
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()


def test_skip_bad_trains_and_reports_the_files(broken_folder, tmp_path, capsys):
    with pytest.warns(UserWarning, match="9999.jpg"):
        code = main(["train", "--data", str(broken_folder), "--out", str(tmp_path / "r"),
                     "--skip-bad", *SMALL])
    assert code == 0
    assert load_checkpoint(tmp_path / "r").meta["config"]["skip_bad"] is True


def test_checkpoint_of_another_model_is_refused(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *SMALL]) == 0
    meta = load_checkpoint(run).meta
    # hfs-seed weights under metadata that names the small "hfs" net of the run.
    other = create_model("hfs-seed", num_classes=3)
    other.model_name, other.model_options = meta["model"], meta["model_options"]
    forged = tmp_path / "forged.safetensors"
    save_checkpoint(forged, other, meta)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(forged), "--data", str(tiny_folder)]) == 2
    line = one_error_line(capsys)
    assert "forged.safetensors" in line and "do not fit" in line


@pytest.mark.parametrize("flag,value", [("--epochs", "-1"), ("--batch-size", "0"),
                                        ("--lr", "0"), ("--keep-last", "0")])
def test_non_positive_numbers(tiny_folder, tmp_path, capsys, flag, value):
    code = main(["train", "--data", str(tiny_folder), "--out", str(tmp_path), *SMALL,
                 flag, value])
    assert code == 2
    assert flag in one_error_line(capsys)


def test_class_names_must_fit_the_head(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *SMALL]) == 0
    ckpt = load_checkpoint(run)
    model = ckpt.build_model()
    meta = {**ckpt.meta, "classes": ["circle", "square"]}  # the head has 3 outputs
    save_checkpoint(tmp_path / "two.safetensors", model, meta)
    image = next((tiny_folder / "test" / "square").glob("*.png"))
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "two.safetensors"), str(image)]) == 2
    assert "2 class names for a head with 3 outputs" in one_error_line(capsys)
