"""`hfsnet adapt`: a pretrained EfficientNet-Lite0 fitted to a tiny image folder, read back by
predict, evaluate and export; its data preparation, fine-tune and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hfsnet import cli
from hfsnet.cli import adapt as adapt_cli
from hfsnet.models import ModelError, create_model, registry
from hfsnet.models.base import count_params
from hfsnet.models.efficientnet import ENTRIES, EfficientNetOptions
from hfsnet.train import resolve_config
from hfsnet.train.checkpoint import load_checkpoint
from hfsnet.train.optim import ParamGroup
from hfsnet.transfer import fit as fit_module
from hfsnet.transfer.adapt import AdaptOptions, adapt
from hfsnet.transfer.finetune import FinetuneOptions, build_finetuner, describe_groups
from hfsnet.transfer.fit import HeadOptions
from hfsnet.transfer.source import Source, load_source, load_target
from tests.helpers import last_json

MODEL = "efficientnet-lite0"
RANDOM = ["--model", MODEL, "--model-opt", "pretrained=false"]  # fast: no weights file
# A randomly initialised Lite0's activations shrink ~10x per stage (1e-10 by the last one,
# zero in a float16 cache): heads on it read the shallow stages.
SHALLOW = ["--levels", "1,2"]


@pytest.fixture(autouse=True)
def adapt_registered(monkeypatch):
    """The model in the registry and `adapt` among the commands, while the lead has not yet
    listed them (``registry.FAMILIES``, ``cli.FAMILIES``); no-ops once they are."""
    if MODEL not in {entry.name for entry in registry.list_models()}:
        monkeypatch.setitem(registry._REGISTRY, MODEL, ENTRIES[0])
    if adapt_cli not in cli.FAMILIES:
        monkeypatch.setattr(cli, "FAMILIES", (*cli.FAMILIES, adapt_cli))


@pytest.fixture
def rgb_folder(tmp_path, make_image_folder):
    return make_image_folder(tmp_path / "rgb", size=32)


def run_adapt(capsys, *flags):
    """Exit code, the --json object (None on failure) and stderr of one `hfsnet adapt`."""
    code = cli.main(["adapt", *flags, "--json"])
    captured = capsys.readouterr()
    payload = json.loads(captured.out.strip().splitlines()[-1]) if code == 0 else None
    return code, payload, captured.err


def same_within_float16(evaluated, adapted) -> bool:
    """adapt scores the cached float16 test descriptors, evaluate reruns the trunk in fp32:
    they may differ by an image whose top two scores are within float16 rounding."""
    return abs(evaluated["test_acc"] - adapted["test_acc"]) <= 1 / adapted["test_images"] + 1e-9


def write_png(path, pixels):
    Image.fromarray(pixels).save(path)
    return path


def test_checkpoint_serves_predict_evaluate_and_export(rgb_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, result, err = run_adapt(capsys, *RANDOM, "--data", str(rgb_folder), "--out", str(out))
    assert code == 0
    assert "feature pass, train [" in err and "feature pass, test [" in err  # progress lines
    assert set(result) >= {"test_acc", "params", "feature_seconds", "fit_seconds",
                           "total_seconds", "out_dir", "classes"}
    assert result["classes"] == ["circle", "square", "stripe"]
    assert result["feature_seconds"] + result["fit_seconds"] <= result["total_seconds"]
    assert result["input_side"] == 96 and result["test_images"] == 18  # upsampled from 32 px
    assert result["head"]["method"] == "ridge" and result["cache_built"]
    ckpt = load_checkpoint(out)
    assert ckpt.meta["mean"] == pytest.approx([127 / 255] * 3)  # the trunk's, not the data's
    assert ckpt.meta["model_options"]["trunk_options"]["pretrained"] is False
    model = ckpt.build_model()
    assert result["params"] == count_params(model)

    assert cli.main(["evaluate", "--checkpoint", str(out), "--data", str(rgb_folder),
                     "--json"]) == 0
    assert same_within_float16(last_json(capsys), result)

    red = np.full((40, 24, 3), 20, dtype=np.uint8)  # another size: predict resizes it
    red[..., 0] = 220  # class 0 ("circle") shows as a dominant red channel
    image = write_png(tmp_path / "red.png", red)
    assert cli.main(["predict", "--checkpoint", str(out), str(image), "--json"]) == 0
    top = last_json(capsys)["predictions"][0]["top"]
    assert top[0]["class"] == "circle" and sum(t["prob"] for t in top) == pytest.approx(1.0)

    exported = tmp_path / "model.pt"
    assert cli.main(["export", "--checkpoint", str(out), "--format", "torchscript", "--out",
                     str(exported)]) == 0
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(p)).transpose(2, 0, 1)
                                        for p in sorted((rgb_folder / "test").glob("*/*.png"))]))
    logits = torch.jit.load(str(exported))(pixels)
    labels = torch.arange(3).repeat_interleave(6)
    assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(
        result["test_acc"])


def test_pretrained_weights_at_32_px(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "few", size=32, per_class=(4, 2))
    out = tmp_path / "run"
    code, result, _ = run_adapt(capsys, "--model", MODEL, "--data", str(data), "--out",
                                str(out), "--levels", "7,8")
    assert code == 0
    weights = load_checkpoint(out).tensors
    reference = create_model(MODEL, num_classes=3, image_size=32)  # the ImageNet weights
    stem = "model.net._conv_stem.weight"
    assert torch.equal(weights[stem], reference.state_dict()["net._conv_stem.weight"])
    assert result["head"]["levels"] == [7, 8] and result["train_images"] == 12
    assert cli.main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--json"]) == 0
    assert same_within_float16(last_json(capsys), result)


def test_grayscale_images_are_replicated_to_rgb(tmp_path, capsys):
    data = tmp_path / "gray"
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 3)):
        for c, name in enumerate(("dark", "light")):
            (data / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 40, (32, 32), dtype=np.uint8) + 40 + 140 * c
                write_png(data / split / name / f"{i}.png", pixels.astype(np.uint8))
    out = tmp_path / "run"
    code, result, err = run_adapt(capsys, *RANDOM, "--data", str(data), "--out", str(out))
    assert code == 0
    assert "grayscale images: replicated to 3 channels" in err
    assert any("replicated" in note for note in result["notes"])
    assert load_checkpoint(out).meta["in_channels"] == 3
    image = write_png(tmp_path / "probe.png", np.full((32, 32), 230, dtype=np.uint8))
    assert cli.main(["predict", "--checkpoint", str(out), str(image), "--json"]) == 0
    assert last_json(capsys)["predictions"][0]["top"][0]["class"] in ("dark", "light")


def test_classes_and_per_class_reach_the_data(rgb_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, result, _ = run_adapt(capsys, *RANDOM, "--data", str(rgb_folder), "--out", str(out),
                                "--classes", "stripe,circle", "--per-class", "5",
                                "--seed", "3")
    assert code == 0
    assert result["classes"] == ["stripe", "circle"]
    assert (result["train_images"], result["test_images"]) == (10, 12)
    meta = load_checkpoint(out).meta
    assert meta["classes"] == ["stripe", "circle"]
    assert meta["adapt"]["per_class"] == 5 and meta["adapt"]["seed"] == 3


def test_finetune_prints_its_parameter_groups_and_reports(rgb_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, result, err = run_adapt(capsys, *RANDOM, "--data", str(rgb_folder), "--out", str(out),
                                  "--levels", "1", "--finetune", "--epochs", "1",
                                  "--batch-size", "24", "--head-lr", "0.001",
                                  "--precision", "fp32", "--quiet")
    assert code == 0
    model = load_checkpoint(out).build_model()
    head = list(model.head.parameters())
    head_params = sum(p.numel() for p in head)
    assert head_params == 16 * 3 + 3  # the first level's 16 channels to 3 classes
    assert f"head: {len(head)} tensors, {head_params:,} params, lr 0.001" in err
    trunk = sum(p.numel() for p in model.trunk_parameters())
    assert f"trunk: {len(model.trunk_parameters())} tensors, {trunk:,} params, lr 0.0002" in err
    finetuned = result["finetune"]
    assert finetuned["epochs"] == 1 and 0 <= finetuned["test_acc"] <= 1
    assert finetuned["out_dir"] == str(out / "finetune")
    assert result["feature_seconds"] + result["fit_seconds"] + finetuned["seconds"] <= result[
        "total_seconds"]
    record = json.loads((out / "finetune" / "finetune.json").read_text())
    assert record["head"] == "kept"  # fine-tuning started from the fitted head
    assert cli.main(["evaluate", "--checkpoint", str(out / "finetune"), "--data",
                     str(rgb_folder), "--json"]) == 0
    assert last_json(capsys)["test_acc"] == pytest.approx(finetuned["test_acc"])


def test_plain_finetune_prints_groups_too(source_run, tmp_path, make_image_folder, capsys):
    source = load_source(source_run)
    data = load_target(source, str(make_image_folder(tmp_path / "new")))
    config = resolve_config(model="hfs", data="new", epochs=1, batch_size=16, lr=0.01)
    build_finetuner(source, data, config, tmp_path / "ft", FinetuneOptions(), progress=False)
    err = capsys.readouterr().err
    head = sum(p.numel() for p in source.model.head_parameters())
    assert f"head: {len(source.model.head_parameters())} tensors, {head:,} params, lr 0.01" in err
    assert "trunk: " in err and "lr 0.002" in err


def test_describe_groups_names_parameters_left_out():
    model = create_model(MODEL, num_classes=2, pretrained=False, image_size=32)
    head_only = [ParamGroup("head", model.head_parameters(), 0.01)]
    lines = describe_groups(model, head_only)
    left = model.trunk_parameters()
    assert lines[-1] == (f"in no group (not trained): {len(left)} tensors, "
                         f"{sum(p.numel() for p in left):,} params")
    twice = [*head_only, ParamGroup("again", model.head_parameters()[:1], 0.1)]
    assert describe_groups(model, [*twice, ParamGroup("trunk", left, 0.1)])[-1] == (
        "in several groups: 1 tensors")


def test_existing_run_is_refused_unless_overwrite(rgb_folder, tmp_path, capsys):
    out = tmp_path / "run"
    flags = [*RANDOM, "--data", str(rgb_folder), "--out", str(out), *SHALLOW]
    assert run_adapt(capsys, *flags)[0] == 0
    before = (out / "checkpoint.safetensors").read_bytes()
    code, _, err = run_adapt(capsys, *flags)
    assert code == 2
    assert err.count("\n") == 1 and "holds a run" in err and "--overwrite" in err
    assert (out / "checkpoint.safetensors").read_bytes() == before
    code, result, _ = run_adapt(capsys, *flags, "--overwrite")
    assert code == 0 and not result["cache_built"]  # the feature cache is reused


def test_single_class_dataset_is_refused(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "one", classes=("only",), size=32)
    code, _, err = run_adapt(capsys, *RANDOM, "--data", str(data), "--out", str(tmp_path / "r"))
    assert code == 2
    assert err.count("\n") == 1
    assert "only one class ('only')" in err and "two or more class folders" in err
    assert not (tmp_path / "r").exists()  # refused inside the run lock: no empty --out left


def test_one_class_left_by_classes_is_refused(rgb_folder, tmp_path, capsys):
    code, _, err = run_adapt(capsys, *RANDOM, "--data", str(rgb_folder), "--out",
                             str(tmp_path / "r"), "--classes", "square")
    assert code == 2 and "only one class ('square')" in err


def test_class_with_one_training_image_is_fitted_with_a_note(tmp_path, make_image_folder,
                                                               capsys):
    data = make_image_folder(tmp_path / "d", size=32)
    for path in sorted((data / "train" / "square").glob("*.png"))[1:]:
        path.unlink()
    code, result, err = run_adapt(capsys, *RANDOM, "--data", str(data), "--out",
                                  str(tmp_path / "r"), *SHALLOW)
    assert code == 0
    assert "['square'] have a single training image" in err
    assert result["train_images"] == 24 + 1 + 24


def test_bad_input_is_one_line_exit_2(rgb_folder, tmp_path, capsys):
    out = str(tmp_path / "r")
    cases = [
        ([*RANDOM, "--out", out], "--data: no dataset given"),
        ([*RANDOM, "--data", str(tmp_path / "missing"), "--out", out], "no such file"),
        ([*RANDOM, "--data", str(rgb_folder), "--out", out, "--classes", "circle,nope"],
         "--classes: ['nope'] are not in the dataset"),
        ([*RANDOM, "--data", str(rgb_folder), "--out", out, "--per-class", "30"],
         "--per-class 30: class 'circle' has only 24"),
        ([*RANDOM, "--data", str(rgb_folder), "--out", out, "--epochs", "2"],
         "--epochs: fine-tuning flags; add --finetune"),
        (["--model", "hfs", "--data", str(rgb_folder), "--out", out],
         "not a pretrained trunk"),
        ([*RANDOM, "--model-opt", "image_size=64", "--data", str(rgb_folder), "--out", out],
         "--model-opt image_size: the input side is --image-size"),
        # refused before the feature pass (no progress lines), not after the head fit
        ([*RANDOM, "--data", str(rgb_folder), "--out", out, "--image-size", "32",
          "--finetune", "--frozen-levels", "17"],
         "--frozen-levels 17: efficientnet-lite0 has 17 levels, so at most 16"),
    ]
    for flags, message in cases:
        code, _, err = run_adapt(capsys, *flags)
        assert code == 2, flags
        assert err.count("\n") == 1 and message in err, (flags, err)
    assert not list((tmp_path / "r").rglob("*"))  # no feature cache, no checkpoint written


def test_small_images_are_upsampled_to_the_models_smallest_side(tmp_path, make_image_folder,
                                                                capsys, monkeypatch):
    """Images under the model's ``adapt_min_side`` (96 px for Lite0) are upsampled to it by the
    trunk, with a note; --image-size overrides; a model without one refuses sides it cannot
    take and names the flag."""
    data = make_image_folder(tmp_path / "small", size=16, per_class=(4, 2))
    code, result, err = run_adapt(capsys, *RANDOM, "--data", str(data), "--out",
                                  str(tmp_path / "a"), *SHALLOW)
    assert code == 0 and result["input_side"] == 96
    assert "the data's 16 px images are upsampled to 96 px" in err
    assert load_checkpoint(tmp_path / "a").meta["image_size"] == [16, 16]  # stored natively
    code, result, err = run_adapt(capsys, *RANDOM, "--data", str(data), "--out",
                                  str(tmp_path / "b"), "--image-size", "32", *SHALLOW)
    assert code == 0 and result["input_side"] == 32 and "upsampled" not in err
    big = make_image_folder(tmp_path / "big", size=100, per_class=(2, 1))
    code, result, err = run_adapt(capsys, *RANDOM, "--data", str(big), "--out",
                                  str(tmp_path / "c"), *SHALLOW)
    assert code == 0 and result["input_side"] == 100 and "upsampled" not in err
    monkeypatch.setattr(EfficientNetOptions, "adapt_min_side", None)
    code, _, err = run_adapt(capsys, *RANDOM, "--data", str(data), "--out", str(tmp_path / "d"))
    assert code == 2 and "--image-size N to upsample" in err


def test_rgba_and_mixed_sizes_load_with_a_note(tmp_path, capsys):
    data = tmp_path / "mixed"
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for c, name in enumerate(("red", "green")):
            (data / split / name).mkdir(parents=True)
            for i in range(count):
                side = 32 + 8 * (i % 2)
                pixels = rng.integers(0, 60, (side, side, 4), dtype=np.uint8)
                pixels[..., c] += 150
                pixels[..., 3] = 0  # fully transparent: the decoder keeps the colour anyway
                write_png(data / split / name / f"{i}.png", pixels)
    out = tmp_path / "run"
    code, result, err = run_adapt(capsys, *RANDOM, "--data", str(data), "--out", str(out),
                                  "--image-size", "48", *SHALLOW)
    assert code == 0
    assert "images differ in size; every image is resized to 48x48 px" in err
    meta = load_checkpoint(out).meta
    assert meta["image_size"] == [48, 48] and meta["in_channels"] == 3
    assert meta["config"]["image_size"] == 48  # evaluate loads the folder the same way
    assert cli.main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--json"]) == 0
    assert same_within_float16(last_json(capsys), result)


def test_library_call_without_the_cli(rgb_folder, tmp_path):
    notes = []
    options = AdaptOptions(per_class=4, head=HeadOptions(levels="1,2", seed=1))
    result = adapt(MODEL, str(rgb_folder), tmp_path / "lib", options,
                   model_options={"pretrained": False}, note=notes.append)
    assert result.train_images == 12 and result.classes == ["circle", "square", "stripe"]
    assert result.head["levels"] == [1, 2] and result.input_side == 96
    assert notes[0].startswith("input side: the data's 32 px") and notes[1].startswith(
        "feature pass: efficientnet-lite0 at 96 px")
    saved = json.loads((tmp_path / "lib" / "result.json").read_text())
    assert saved["test_acc"] == result.test_acc and saved["epochs"] == 0


def test_adapts_ridge_fit_skips_the_gram_matrix(rgb_folder, tmp_path, monkeypatch):
    """adapt saves no moments (nothing can --add to its head), so its dual fit (12 rows, 48
    columns) sums only the columns' squares instead of the d x d Gram matrix: 3.8-6.7x faster
    for 2x2 heads (benchmarks/ridge_threads.py --moments keep,skip)."""
    fits, fit_ridge = [], fit_module.fit_ridge

    def spy(*args, **kwargs):
        fits.append(fit_ridge(*args, **kwargs))
        return fits[-1]

    monkeypatch.setattr(fit_module, "fit_ridge", spy)
    options = AdaptOptions(per_class=4, head=HeadOptions(levels="1,2", seed=1))
    adapt(MODEL, str(rgb_folder), tmp_path / "lib", options, model_options={"pretrained": False})
    assert len(fits) == 1 and fits[0].moments is None


@pytest.mark.parametrize(("flags", "taps", "levels"), [
    ([], "blocks", 17), (["--model-opt", "taps=stages"], "stages", 8)])
def test_adapt_defaults_fill_options_the_user_left_unset(rgb_folder, tmp_path, capsys, flags,
                                                         taps, levels):
    """EfficientNet-Lite0 is adapted on every block's output unless told otherwise, and the
    checkpoint records the taps it was built with, so it rebuilds the same whatever the
    default later becomes."""
    out = tmp_path / "run"
    code, result, _ = run_adapt(capsys, *RANDOM, *flags, "--data", str(rgb_folder), "--out",
                                str(out), *SHALLOW)
    assert code == 0 and result["head"]["levels"] == [1, 2]
    meta = load_checkpoint(out).meta
    assert meta["model_options"]["trunk_options"]["taps"] == taps
    assert len(load_checkpoint(out).build_model().stage_channels()) == levels


def test_pretrained_source_has_the_models_preprocessing():
    model = create_model(MODEL, num_classes=2, pretrained=False, image_size=32)
    source = Source.pretrained(model)
    assert source.mean == pytest.approx((127 / 255,) * 3)
    assert source.std == pytest.approx((128 / 255,) * 3)
    assert source.classes == [] and source.in_channels == 3 and source.checkpoint is None
    assert source.default_cache is None and "pretrained" in source.origin
    with pytest.raises(ModelError, match="not a pretrained trunk"):
        Source.pretrained(create_model("hfs", num_classes=2, stages=[1, 1], growth=8, stem=8))
