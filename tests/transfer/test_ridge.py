import numpy as np
import pytest

from hfsnet.transfer import ridge
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.ridge import accumulate, feature_scale, fit_ridge, holdout_mask, use_dual


def problem(n=240, d=6, k=3, seed=0):
    """Gaussian classes with different means, features stored as float16 like a cache."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    centers = rng.normal(0, 1.5, (k, d))
    scales = rng.uniform(0.2, 5.0, d)  # unequal column scales: standardisation matters
    x = (centers[labels] + rng.normal(0, 1, (n, d))) * scales + rng.normal(0, 3, d)
    return x.astype(np.float16), labels.astype(np.int64)


def numpy_ridge(x, labels, k, alpha):
    """Textbook closed form: standardise, append an unpenalised intercept, solve."""
    x = x.astype(np.float64)
    mu, sd = x.mean(0), x.std(0)
    xs = (x - mu) / sd
    n, d = xs.shape
    design = np.hstack([xs, np.ones((n, 1))])
    lam = alpha * np.trace(xs.T @ xs) / d
    penalty = np.diag([lam] * d + [0.0])
    coef = np.linalg.solve(design.T @ design + penalty, design.T @ np.eye(k)[labels])
    return coef[:d], coef[d], mu, sd


@pytest.mark.parametrize("alpha", [1e-3, 0.1, 10.0])
def test_single_alpha_matches_numpy_closed_form(alpha):
    x, y = problem()
    fit = fit_ridge(x, y, 3, alphas=[alpha], chunk=50)  # several chunks
    coef, intercept, mu, sd = numpy_ridge(x, y, 3, alpha)
    np.testing.assert_allclose(fit.weight.numpy(), (coef / sd[:, None]).T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.bias.numpy(), intercept - (mu / sd) @ coef, rtol=1e-9,
                               atol=1e-12)
    assert fit.alpha == alpha and fit.holdout_acc == {}


@pytest.mark.parametrize(("n", "d"), [(300, 12), (60, 150)])  # primal, dual
def test_grid_picks_the_best_holdout_alpha_then_refits_on_all_rows(n, d):
    x, y = problem(n=n, d=d, seed=3)
    alphas = [1e-3, 1e-1, 1e1, 1e3]
    fit = fit_ridge(x, y, 3, alphas=alphas, holdout=0.2, seed=5, chunk=64)
    held = holdout_mask(len(x), 0.2, 5)
    assert held.sum() == n // 5
    expected = {}
    for alpha in alphas:
        coef, intercept, mu, sd = numpy_ridge(x[~held], y[~held], 3, alpha)
        scores = ((x[held].astype(np.float64) - mu) / sd) @ coef + intercept
        expected[alpha] = float((scores.argmax(1) == y[held]).mean())
    assert fit.holdout_acc == pytest.approx(expected)
    best = max(alphas, key=lambda a: (expected[a], a))
    assert fit.alpha == best
    coef, intercept, mu, sd = numpy_ridge(x, y, 3, best)
    np.testing.assert_allclose(fit.weight.numpy(), (coef / sd[:, None]).T, rtol=1e-8, atol=1e-12)


def test_constant_columns_are_left_alone():
    x, y = problem()
    x[:, 2] = 0  # a dead unit
    fit = fit_ridge(x, y, 3, alphas=[0.1])
    assert np.all(np.isfinite(fit.weight.numpy()))
    assert np.all(fit.weight.numpy()[:, 2] == 0)


def test_too_few_rows_is_an_error():
    x, y = problem(n=1)
    with pytest.raises(CacheError, match="at least 2 training rows"):
        fit_ridge(x, y, 3)


def test_temperature_minimises_held_out_cross_entropy():
    x, y = problem(n=400, d=12, seed=1)
    fit = fit_ridge(x, y, 3, alphas=[1e-2, 1.0], holdout=0.25, seed=2)
    held = holdout_mask(len(x), 0.25, 2)
    coef, intercept, mu, sd = numpy_ridge(x[~held], y[~held], 3, fit.alpha)
    scores = ((x[held].astype(np.float64) - mu) / sd) @ coef + intercept

    def cross_entropy(t):
        logits = t * scores
        logits -= logits.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(logits)),
                                                                    y[held]]))

    assert 1 < fit.temperature < 1000  # regression scores are too flat for a softmax
    step = 10**0.05  # the grid's spacing
    assert cross_entropy(fit.temperature) <= cross_entropy(fit.temperature * step)
    assert cross_entropy(fit.temperature) <= cross_entropy(fit.temperature / step)
    assert cross_entropy(fit.temperature) < cross_entropy(1.0)


def test_without_standardisation_the_penalty_is_on_raw_columns():
    x, y = problem()
    fit = fit_ridge(x, y, 3, alphas=[0.1], standardize=False)
    raw = x.astype(np.float64)
    centred = raw - raw.mean(0)
    lam = 0.1 * np.trace(centred.T @ centred) / raw.shape[1]
    target = np.eye(3)[y]
    coef = np.linalg.solve(centred.T @ centred + lam * np.eye(raw.shape[1]),
                           centred.T @ (target - target.mean(0)))
    np.testing.assert_allclose(fit.weight.numpy(), coef.T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.scale.numpy(), np.ones(raw.shape[1]))


def test_unknown_alpha_selection_is_refused():
    x, y = problem()
    with pytest.raises(CacheError, match="--alpha-select"):
        fit_ridge(x, y, 3, alpha_select="cv")


def test_the_dual_is_used_exactly_when_there_are_no_more_rows_than_columns():
    assert use_dual(1000, 12352) and use_dual(120, 120)
    assert not use_dual(121, 120)


def refuse(*_args, **_kwargs):
    raise AssertionError("the other path was taken")


@pytest.mark.parametrize("alpha_select", ["holdout", "loo"])
def test_fit_ridge_takes_the_primal_path_for_tall_data_and_the_dual_for_wide(monkeypatch,
                                                                            alpha_select):
    tall, tall_labels = problem(n=240, d=6)
    wide, wide_labels = problem(n=40, d=120)
    alphas = [1e-2, 1.0]
    with monkeypatch.context() as patch:
        patch.setattr(ridge._DualSpectrum, "of", refuse)
        fit_ridge(tall, tall_labels, 3, alphas=alphas, alpha_select=alpha_select)
        with pytest.raises(AssertionError, match="other path"):
            fit_ridge(wide, wide_labels, 3, alphas=alphas, alpha_select=alpha_select)
    monkeypatch.setattr(ridge._Spectrum, "of", refuse)
    monkeypatch.setattr(ridge, "solve", refuse)
    fit_ridge(wide, wide_labels, 3, alphas=alphas, alpha_select=alpha_select)
    with pytest.raises(AssertionError, match="other path"):
        fit_ridge(tall, tall_labels, 3, alphas=alphas, alpha_select=alpha_select)


def fit_through(monkeypatch, dual, *args, **kwargs):
    """``fit_ridge`` forced onto the dual (``dual``) or the primal path."""
    with monkeypatch.context() as patch:
        patch.setattr(ridge, "use_dual", lambda n, d: dual)
        return fit_ridge(*args, **kwargs)


GRID = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]


@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize(("alpha_select", "alphas"),
                         [("holdout", GRID), ("loo", GRID), ("loo", [0.3])])
def test_dual_and_primal_fits_agree(monkeypatch, alpha_select, alphas, standardize):
    x, y = problem(n=40, d=120, seed=7)
    options = {"alphas": alphas, "holdout": 0.25, "seed": 1, "chunk": 16,
               "standardize": standardize, "alpha_select": alpha_select}
    dual = fit_through(monkeypatch, True, x, y, 3, **options)
    primal = fit_through(monkeypatch, False, x, y, 3, **options)
    assert dual.alpha == primal.alpha
    assert dual.lam == pytest.approx(primal.lam, rel=1e-10)
    assert dual.temperature == primal.temperature
    assert dual.holdout_acc == primal.holdout_acc
    assert dual.loo_acc == primal.loo_acc
    assert dual.loo_mse == pytest.approx(primal.loo_mse, rel=1e-8)
    tolerance = 1e-8 * float(primal.weight.abs().max())
    np.testing.assert_allclose(dual.weight.numpy(), primal.weight.numpy(), rtol=1e-7,
                               atol=tolerance)
    np.testing.assert_allclose(dual.bias.numpy(), primal.bias.numpy(), rtol=1e-7, atol=1e-9)
    fresh, _ = problem(n=30, d=120, seed=8)
    scores = [fresh.astype(np.float64) @ f.weight.numpy().T + f.bias.numpy()
              for f in (dual, primal)]
    np.testing.assert_allclose(*scores, rtol=1e-7, atol=1e-8)
    if len(alphas) > 1:  # the grid's scores differ, so the chosen alpha is a real choice
        grid = dual.holdout_acc or dual.loo_mse
        assert len(set(grid.values())) > 1


def test_dual_and_primal_loo_predictions_agree(monkeypatch):
    x, y = problem(n=40, d=120, seed=9)
    every, _ = accumulate(x, y, 3, np.zeros(len(x), dtype=bool))
    scale = feature_scale(every)
    predictions = []
    for dual in (True, False):
        monkeypatch.setattr(ridge, "use_dual", lambda n, d, dual=dual: dual)
        predictions.append(ridge.loo_predictions(x, y, every, scale, GRID, chunk=16))
    for alpha in GRID:
        np.testing.assert_allclose(predictions[0][alpha].numpy(), predictions[1][alpha].numpy(),
                                   rtol=1e-7, atol=1e-8)
    # a wide ridge nearly interpolates its rows, so leaving one out must change its prediction
    assert not np.allclose(predictions[0][1e-3].numpy(), np.eye(3)[y], atol=0.1)


HAND = np.array([[1, 0, 2, 0, 1],
                 [0, 1, 0, 3, 1],
                 [2, 2, 1, 0, 0]], dtype=np.float32)


@pytest.mark.parametrize("alpha", [0.05, 2.0])
def test_three_rows_of_five_columns_match_the_primal_normal_equations(alpha):
    labels = np.array([0, 1, 1])
    fit = fit_ridge(HAND, labels, 2, alphas=[alpha])
    coef, intercept, mu, sd = numpy_ridge(HAND, labels, 2, alpha)
    np.testing.assert_allclose(fit.weight.numpy(), (coef / sd[:, None]).T, rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(fit.bias.numpy(), intercept - (mu / sd) @ coef, rtol=1e-10,
                               atol=1e-12)


def test_three_rows_of_five_columns_are_interpolated_as_alpha_vanishes():
    labels = np.array([0, 1, 1])
    fit = fit_ridge(HAND, labels, 2, alphas=[1e-9], standardize=False)
    scores = HAND.astype(np.float64) @ fit.weight.numpy().T + fit.bias.numpy()
    np.testing.assert_allclose(scores, np.eye(2)[labels], atol=1e-7)
    assert fit.lam == pytest.approx(1e-9 * ((HAND - HAND.mean(0)) ** 2).sum() / 5)


@pytest.mark.parametrize(("n", "d"), [(40, 120), (240, 6)])
@pytest.mark.parametrize("alpha_select", ["holdout", "loo"])
def test_a_fit_whose_moments_nobody_keeps_skips_the_gram_only_in_the_dual(n, d, alpha_select):
    """keep_moments=False: the same fit; a dual fit (n <= d) returns no moments, having summed
    only the columns' squares, a primal fit needs (and returns) the Gram matrix anyway."""
    x, y = problem(n=n, d=d, seed=3)
    options = {"alphas": GRID, "alpha_select": alpha_select, "seed": 1}
    kept = fit_ridge(x, y, 3, **options)
    light = fit_ridge(x, y, 3, keep_moments=False, **options)
    assert light.alpha == kept.alpha and light.lam == pytest.approx(kept.lam, rel=1e-12)
    np.testing.assert_allclose(light.weight.numpy(), kept.weight.numpy(), rtol=1e-10,
                               atol=1e-12)
    assert kept.moments is not None and kept.moments.sxx.shape == (d, d)
    if use_dual(n, d):
        assert light.moments is None
    else:
        assert light.moments is not None and light.moments.sxx.shape == (d, d)


def test_diagonal_moments_hold_the_column_squares_and_refuse_a_primal_solve():
    x, y = problem(n=50, d=8, seed=4)
    full, _ = accumulate(x, y, 3, np.zeros(50, dtype=bool))
    light, _ = accumulate(x, y, 3, np.zeros(50, dtype=bool), gram=False)
    assert light.sxx.shape == (8,) and not light.has_gram
    np.testing.assert_allclose(light.column_squares().numpy(),
                               np.diag(full.sxx.numpy()), rtol=1e-12)
    np.testing.assert_allclose(feature_scale(light).numpy(), feature_scale(full).numpy(),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="no Gram matrix"):
        light.centered(feature_scale(light))
