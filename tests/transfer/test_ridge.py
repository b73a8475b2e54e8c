import numpy as np
import pytest

from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.ridge import fit_ridge, holdout_mask


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


def test_grid_picks_the_best_holdout_alpha_then_refits_on_all_rows():
    x, y = problem(n=300, d=12, seed=3)
    alphas = [1e-3, 1e-1, 1e1, 1e3]
    fit = fit_ridge(x, y, 3, alphas=alphas, holdout=0.2, seed=5, chunk=64)
    held = holdout_mask(len(x), 0.2, 5)
    assert held.sum() == 60
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
