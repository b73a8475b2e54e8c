"""Descriptor options of ridge heads: exact leave-one-out strength, center-l2, Head2Toe column
selection and random ReLU features, and the head transform that carries them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hfsnet.models.head import LevelHead
from hfsnet.models.level_head import install_head
from hfsnet.train.checkpoint import load_checkpoint, save_checkpoint
from hfsnet.transfer import ridge
from hfsnet.transfer.descriptors import build_transform, keep_budget, projection
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.ridge import (
    accumulate,
    feature_scale,
    fit_ridge,
    holdout_mask,
    loo_predictions,
    strength,
)
from tests.helpers import tiny_hfs
from tests.transfer.test_ridge import problem

META = {"classes": ["a", "b", "c"], "in_channels": 3, "image_size": [16, 16],
        "mean": [0.5] * 3, "std": [0.25] * 3, "config": {}}
WIDTH = 8 + 16  # tiny_hfs: gap over stages of 8 and 16 channels


def brute_force_loo(x, labels, k, alpha, views=1):
    """Refit without each image in turn (its ``views`` rows i, m + i, ..., m = n / views; same
    column scale and strength as the fit on all rows, unpenalised intercept) and predict the
    rows left out."""
    scale = x.std(0)
    z = x / scale
    centred = z - z.mean(0)
    lam = alpha * np.trace(centred.T @ centred) / z.shape[1]
    y = np.eye(k)[labels]
    out = np.zeros((len(x), k))
    images = len(x) // views
    for i in range(images):
        out_rows = np.arange(len(x)) % images == i
        rest = ~out_rows
        zc, yc = z[rest] - z[rest].mean(0), y[rest] - y[rest].mean(0)
        coef = np.linalg.solve(zc.T @ zc + lam * np.eye(z.shape[1]), zc.T @ yc)
        out[out_rows] = (z[out_rows] - z[rest].mean(0)) @ coef + y[rest].mean(0)
    return out


def viewed(n, d, views, seed):
    """``views`` noisy copies of each of ``n`` images' rows, view-major, and their labels."""
    x, y = problem(n=n, d=d, seed=seed)
    rng = np.random.default_rng(seed + 100)
    copies = [x.astype(np.float64) + rng.normal(0, 0.3, x.shape) for _ in range(views)]
    return np.concatenate(copies), np.tile(y, views)


def test_loo_predictions_equal_brute_force_leave_one_out():
    x, y = problem(n=40, d=5, seed=2)
    x = x.astype(np.float64)
    every, _ = accumulate(x, y, 3, np.zeros(len(x), dtype=bool), chunk=7)
    alphas = [1e-2, 1.0, 30.0]
    scores = loo_predictions(x, y, every, feature_scale(every), alphas, chunk=7)
    gram, _ = every.centered(feature_scale(every))
    for alpha in alphas:
        np.testing.assert_allclose(scores[alpha].numpy(), brute_force_loo(x, y, 3, alpha),
                                   rtol=1e-9, atol=1e-10)
        assert strength(gram, alpha) > 0


@pytest.mark.parametrize("dual", [False, True])
def test_with_views_whole_images_are_left_out_exactly(monkeypatch, dual):
    x, y = viewed(n=20, d=6 if not dual else 90, views=3, seed=5)
    monkeypatch.setattr(ridge, "use_dual", lambda n, d: dual)
    every, _ = accumulate(x, y, 3, np.zeros(len(x), dtype=bool), chunk=7)
    alphas = [1e-2, 1.0]
    rows = ridge.as_rows(x)
    problem_ = ridge._Problem(rows, y, 3, feature_scale(every), 7, dual, views=3)
    scores = problem_.loo(problem_.spectrum(every, np.arange(len(x))), alphas)
    for alpha in alphas:
        expected = brute_force_loo(x, y, 3, alpha, views=3)
        np.testing.assert_allclose(scores[alpha].numpy(), expected, rtol=1e-8, atol=1e-9)
        # leaving one row out is a different (more optimistic) prediction
        assert not np.allclose(expected, brute_force_loo(x, y, 3, alpha), atol=1e-3)


def test_with_views_the_holdout_takes_whole_images(monkeypatch):
    x, y = viewed(n=30, d=5, views=2, seed=6)
    masks = []

    def spy(features, labels, k, mask, chunk=ridge.CHUNK, gram=True):
        masks.append(mask.copy())
        return accumulate(features, labels, k, mask, chunk, gram)
    monkeypatch.setattr(ridge, "accumulate", spy)
    fit_ridge(x, y, 3, alphas=[0.1, 10.0], holdout=0.2, seed=3, views=2)
    by_view = masks[0].reshape(2, 30)
    assert np.array_equal(by_view[0], by_view[1])  # both views of an image, or neither
    assert np.array_equal(by_view[0], holdout_mask(30, 0.2, 3)) and by_view[0].sum() == 6
    with pytest.raises(CacheError, match="not 4 views"):
        fit_ridge(x[:-2], y[:-2], 3, views=4)


def test_loo_alpha_is_the_best_brute_force_loo_accuracy():
    x, y = problem(n=60, d=8, seed=4)
    x = x.astype(np.float64)
    alphas = [1e-3, 1e-1, 1e1, 1e3]
    fit = fit_ridge(x, y, 3, alphas=alphas, alpha_select="loo")
    onehot = np.eye(3)[y]
    expected = {}
    for alpha in alphas:
        pred = brute_force_loo(x, y, 3, alpha)
        expected[alpha] = ((pred.argmax(1) == y).mean(), -((pred - onehot) ** 2).sum(1).mean())
    assert fit.loo_acc == pytest.approx({a: v[0] for a, v in expected.items()})
    assert fit.loo_mse == pytest.approx({a: -v[1] for a, v in expected.items()})
    assert fit.alpha == max(alphas, key=lambda a: (*expected[a], a))
    assert fit.holdout_acc == {} and fit.moments.n == len(x)  # every row, none held out


def test_center_l2_head_is_the_formula_and_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.uniform(0, 3, (50, WIDTH)).astype(np.float16)
    labels = rng.integers(0, 3, 50)
    transform = build_transform(features, labels, 3, "gap", normalize="center-l2")
    mean = features.astype(np.float64).mean(0)
    np.testing.assert_allclose(transform.shift.numpy(), mean, rtol=1e-6)
    model = tiny_hfs(num_classes=3)
    head = LevelHead(model.stage_channels(), [1, 2], "gap", 3, transform=transform.settings)
    head.transform.load_state_dict(transform.state_dict())
    x = torch.randn(6, WIDTH)
    expected = head.classifier(F.normalize(x - transform.shift, dim=1))
    torch.testing.assert_close(head.forward_descriptor(x), expected)
    centred = x.double() - transform.shift.double()
    torch.testing.assert_close(head.transform(x.double()),
                               centred / centred.norm(dim=1, keepdim=True))
    install_head(model, head)
    assert model.model_options["transform"]["l2"] is True
    save_checkpoint(tmp_path / "ck.safetensors", model, META)
    rebuilt = load_checkpoint(tmp_path / "ck.safetensors").build_model()
    assert {"head.transform.shift"} <= set(rebuilt.state_dict())
    torch.testing.assert_close(rebuilt.head.forward_descriptor(x), expected)


def test_a_head_without_transform_keeps_its_old_keys_and_options():
    model = tiny_hfs(num_classes=3)
    install_head(model, LevelHead(model.stage_channels(), [1, 2], "gap", 3))
    assert "transform" not in model.model_options
    assert not any(".transform." in key for key in model.state_dict())


def test_keep_budget_takes_whole_groups_best_first_and_cuts_the_last():
    scores = torch.tensor([1.0, 3.0, 2.0])
    assert keep_budget(scores, 4, 6).tolist() == [4, 5, 6, 7, 8, 9]
    assert keep_budget(scores, 1, 2).tolist() == [1, 2]


def test_selection_keeps_the_budget_of_informative_columns_and_reads_only_them():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    features = rng.normal(0, 1, (300, WIDTH))
    features[:, [3, 11, 17]] += 3 * np.eye(3)[labels]  # the only columns that tell classes apart
    transform = build_transform(features, labels, 3, "gap", normalize="standardize", select=3)
    assert transform.columns.tolist() == [3, 11, 17]
    head = LevelHead([8, 16], [1, 2], "gap", 3, transform=transform.settings)
    head.transform.load_state_dict(transform.state_dict())
    assert head.classifier.in_features == 3
    x = torch.randn(5, WIDTH)
    noise = x.clone()
    noise[:, [0, 1, 2, 4, 20]] += 100  # columns outside the selection
    torch.testing.assert_close(head.forward_descriptor(noise), head.forward_descriptor(x))
    with pytest.raises(CacheError, match="--select"):
        build_transform(features, labels, 3, "gap", normalize="standardize", select=WIDTH)


def test_expansion_is_deterministic_per_seed_and_saved(tmp_path):
    torch.testing.assert_close(projection(5, 8, 3), projection(5, 8, 3))
    assert not torch.equal(projection(5, 8, 3), projection(5, 8, 4))
    rng = np.random.default_rng(2)
    features = rng.normal(0, 1, (40, WIDTH)).astype(np.float16)
    labels = rng.integers(0, 3, 40)
    transform = build_transform(features, labels, 3, "gap", normalize="center-l2", expand=10,
                                expand_input=True, seed=3)
    torch.testing.assert_close(transform.projection, projection(WIDTH, 10, 3))
    assert transform.out_width == WIDTH + 10
    model = tiny_hfs(num_classes=3)
    head = LevelHead(model.stage_channels(), [1, 2], "gap", 3, transform=transform.settings)
    head.transform.load_state_dict(transform.state_dict())
    x = torch.randn(4, WIDTH)
    normalised = F.normalize(x - transform.shift, dim=1)
    torch.testing.assert_close(head.transform(x), torch.cat(
        [normalised, torch.relu(normalised @ transform.projection)], 1))
    install_head(model, head)
    save_checkpoint(tmp_path / "ck.safetensors", model, META)
    rebuilt = load_checkpoint(tmp_path / "ck.safetensors").build_model().head
    torch.testing.assert_close(rebuilt.transform.projection, transform.projection)
    torch.testing.assert_close(rebuilt.forward_descriptor(x), head.forward_descriptor(x))
