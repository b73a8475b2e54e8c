"""``fit-head --add``: a ridge head extended from its saved statistics equals a refit on all
rows; bad requests are one line naming the file."""

from pathlib import Path

import numpy as np
import pytest
import torch

from hfsnet.cli import main
from hfsnet.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from hfsnet.transfer.ridge import feature_scale, fit_ridge, solve
from hfsnet.transfer.stats import STATS_NAME, Rows, load_state
from hfsnet.transfer.store import open_cache
from tests.helpers import last_json
from tests.transfer.conftest import save_source


def fit(source, data, out, capsys, *flags):
    assert main(["fit-head", "--checkpoint", str(source), "--data", str(data), "--out",
                 str(out), "--json", *flags]) == 0
    return last_json(capsys)


def add(run, data, out, capsys):
    assert main(["fit-head", "--checkpoint", str(run), "--add", str(data), "--out", str(out),
                 "--json"]) == 0
    return last_json(capsys)


def train_rows(result, classes):
    """The cache's training descriptors and their labels renumbered into ``classes``."""
    cache = open_cache(Path(result["cache_path"]))
    relabel = np.array([classes.index(name) for name in cache.classes])
    return cache.features("train").astype(np.float64), relabel[cache.labels("train")]


def assert_refit_on_all_rows(first, added, out, classes):
    """The --add head is the ridge fit, with the first fit's alpha, on every row as its linear
    layer reads them (through the head's transform, the same before and after --add)."""
    features, labels = zip(*(train_rows(r, classes) for r in (first, added)), strict=True)
    alpha = first["details"]["alpha"]
    head = load_checkpoint(out).build_model().head
    transform = head.transform if head.transform_settings else None
    state = load_state(out / STATS_NAME)
    refit = fit_ridge(Rows(np.concatenate(features), transform), np.concatenate(labels),
                      len(classes), alphas=[alpha], standardize=state.meta["standardize"])
    assert state.meta["classes"] == classes and state.moments.n == len(np.concatenate(labels))
    scale = feature_scale(state.moments, state.meta["standardize"])
    weight, bias, _ = solve(state.moments, alpha, scale)
    np.testing.assert_allclose(weight.numpy(), refit.weight.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(bias.numpy(), refit.bias.numpy(), rtol=1e-6, atol=1e-9)
    scaled = first["details"]["temperature"] * refit.weight
    torch.testing.assert_close(head.classifier.weight.double(), scaled, rtol=1e-6,
                               atol=1e-6 * float(scaled.abs().max()))


@pytest.mark.parametrize("normalize", ["standardize", "center-l2", "none"])
def test_add_new_classes_equals_a_refit_on_all_rows(source_run, make_image_folder, tmp_path,
                                                    capsys, normalize):
    old = make_image_folder(tmp_path / "old", classes=("a", "b"), per_class=(20, 4), seed=1)
    new = make_image_folder(tmp_path / "new", classes=("b", "c", "d"), per_class=(12, 4),
                            seed=2)
    first = fit(source_run, old, tmp_path / "run", capsys, "--normalize", normalize)
    assert (tmp_path / "run" / STATS_NAME).is_file()
    added = add(tmp_path / "run", new, tmp_path / "added", capsys)
    classes = ["a", "b", "c", "d"]  # the old ones first, then the new in DATA's order
    assert added["details"]["new_classes"] == ["c", "d"]
    assert added["details"]["added_rows"] == 36 and added["details"]["rows"] == 76
    assert load_checkpoint(tmp_path / "added").meta["classes"] == classes
    assert_refit_on_all_rows(first, added, tmp_path / "added", classes)
    assert 0 <= added["test_acc"] <= 1


def test_add_images_of_old_classes_equals_a_refit_on_all_rows(source_run, make_image_folder,
                                                              tmp_path, capsys):
    old = make_image_folder(tmp_path / "old", classes=("a", "b", "c"), per_class=(16, 4),
                            seed=3)
    more = make_image_folder(tmp_path / "more", classes=("a", "c"), per_class=(10, 4), seed=4)
    first = fit(source_run, old, tmp_path / "run", capsys)
    added = add(tmp_path / "run", more, tmp_path / "added", capsys)
    assert added["details"]["new_classes"] == []
    assert load_checkpoint(tmp_path / "added").meta["classes"] == ["a", "b", "c"]
    assert_refit_on_all_rows(first, added, tmp_path / "added", ["a", "b", "c"])


def test_add_keeps_the_heads_kept_columns_and_projection(source_run, make_image_folder,
                                                         tmp_path, capsys):
    old = make_image_folder(tmp_path / "old", classes=("a", "b"), per_class=(20, 4), seed=1)
    new = make_image_folder(tmp_path / "new", classes=("c", "d"), per_class=(10, 4), seed=2)
    fit(source_run, old, tmp_path / "run", capsys, "--select", "12", "--expand", "6",
        "--normalize", "center-l2")
    add(tmp_path / "run", new, tmp_path / "added", capsys)
    before = load_checkpoint(tmp_path / "run").build_model().head.transform.state_dict()
    after = load_checkpoint(tmp_path / "added").build_model().head.transform.state_dict()
    assert set(before) == {"columns", "shift", "projection"} and len(before["columns"]) == 12
    for key, value in before.items():
        assert torch.equal(after[key], value)


def one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_bad_adds_are_one_line_naming_the_file(source_run, make_image_folder, tmp_path, capsys):
    old = make_image_folder(tmp_path / "old", classes=("a", "b"), per_class=(12, 4), seed=1)
    fit(source_run, old, tmp_path / "run", capsys)
    argv = ["fit-head", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "o")]
    # no statistics: the checkpoint is no fit-head output
    err = one_line_error(capsys, [*argv[:2], str(source_run), *argv[3:], "--add", str(old)])
    assert str(source_run / STATS_NAME) in err
    # images of another size than the trunk reads
    big = make_image_folder(tmp_path / "big", classes=("a", "b"), per_class=(4, 2), size=32)
    err = one_line_error(capsys, [*argv, "--add", str(big)])
    assert "--data" in err and str(tmp_path / "run" / "checkpoint.safetensors") in err
    # statistics of another trunk (other weights) in the run directory
    other = save_source(tmp_path / "other")
    model = load_checkpoint(other).build_model()
    with torch.no_grad():
        next(model.parameters()).add_(1)
    save_checkpoint(other / CHECKPOINT_NAME, model, load_checkpoint(other).meta)
    fit(other, old, tmp_path / "run2", capsys)
    (tmp_path / "run" / STATS_NAME).write_bytes((tmp_path / "run2" / STATS_NAME).read_bytes())
    err = one_line_error(capsys, [*argv, "--add", str(old)])
    assert str(tmp_path / "run" / STATS_NAME) in err and "another trunk" in err
    # flags the earlier fit decides
    err = one_line_error(capsys, [*argv, "--add", str(old), "--select", "3"])
    assert "--select" in err


def test_an_sgd_head_writes_no_statistics(source_run, make_image_folder, tmp_path, capsys):
    old = make_image_folder(tmp_path / "old", classes=("a", "b"), per_class=(12, 4), seed=1)
    fit(source_run, old, tmp_path / "run", capsys, "--method", "sgd", "--epochs", "2",
        "--normalize", "center-l2")
    assert not (tmp_path / "run" / STATS_NAME).exists()


def test_add_gives_the_new_images_the_views_of_the_first_fit(source_run, make_image_folder,
                                                             tmp_path, capsys):
    old = make_image_folder(tmp_path / "old", classes=("a", "b"), per_class=(10, 4), seed=5)
    new = make_image_folder(tmp_path / "new", classes=("b", "c"), per_class=(6, 4), seed=6)
    first = fit(source_run, old, tmp_path / "run", capsys, "--train-views", "flip")
    assert len(open_cache(Path(first["cache_path"])).labels("train")) == 40  # 20 images x 2
    added = add(tmp_path / "run", new, tmp_path / "added", capsys)
    assert added["details"]["added_rows"] == 24 and added["details"]["rows"] == 64
    assert open_cache(Path(added["cache_path"])).views == 2
    assert_refit_on_all_rows(first, added, tmp_path / "added", ["a", "b", "c"])
    assert main(["fit-head", "--checkpoint", str(tmp_path / "run"), "--add", str(new), "--out",
                 str(tmp_path / "again"), "--train-views", "none"]) == 2
    assert "drop --train-views" in capsys.readouterr().err
