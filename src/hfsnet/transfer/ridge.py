"""Closed-form ridge regression of one-hot targets on cached descriptors (the seed's phi = W^T X).

Only sufficient statistics are accumulated, in float64 over chunks of rows, so memory does not
grow with the number of rows: n, sum x, X^T X, X^T Y and sum y. Features are standardised with
the training mean and standard deviation, the intercept is not penalised, and the ridge strength
is ``alpha * trace(C) / d`` (C the standardised, centred Gram matrix) so one grid fits any
feature scale and row count. ``alpha`` is chosen by accuracy on a held-out share of the rows,
then the model is refitted on every row.

Regression scores of one-hot targets sit around 0..1, far too flat for a softmax, so the fit also
carries a temperature: the factor on the scores that minimises cross-entropy on the held-out rows
(on the training rows when there is nothing held out). It leaves every argmax unchanged and makes
``predict``'s probabilities, ``evaluate``'s loss and fine-tuning from this head start sensibly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.stats import CHUNK, safe_std
from hfsnet.transfer.threads import single_thread

ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))
TEMPERATURES = tuple(float(t) for t in np.logspace(-1, 3, 81))  # 12% steps


@dataclass
class Moments:
    """Sufficient statistics of rows x (d) and one-hot targets y (k), float64."""

    sx: torch.Tensor
    sxx: torch.Tensor
    sxy: torch.Tensor
    sy: torch.Tensor
    n: int = 0

    @classmethod
    def zeros(cls, d: int, k: int) -> Moments:
        f64 = torch.float64
        return cls(torch.zeros(d, dtype=f64), torch.zeros(d, d, dtype=f64),
                   torch.zeros(d, k, dtype=f64), torch.zeros(k, dtype=f64))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.n += len(x)
        self.sx += x.sum(0)
        self.sxx += x.T @ x
        self.sxy += x.T @ y
        self.sy += y.sum(0)

    def merged(self, other: Moments) -> Moments:
        return Moments(self.sx + other.sx, self.sxx + other.sxx, self.sxy + other.sxy,
                       self.sy + other.sy, self.n + other.n)

    def mean(self) -> torch.Tensor:
        return self.sx / self.n

    def target_mean(self) -> torch.Tensor:
        return self.sy / self.n

    def centered(self, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gram and cross matrices of ``x / scale`` centred at this part's own mean."""
        mu, ybar = self.mean(), self.target_mean()
        gram = (self.sxx - self.n * torch.outer(mu, mu)) / torch.outer(scale, scale)
        cross = (self.sxy - self.n * torch.outer(mu, ybar)) / scale[:, None]
        return gram, cross


@dataclass
class RidgeFit:
    """A linear map from raw descriptors to scores: ``x @ weight.T + bias`` (standardisation
    folded in), with the chosen strength and the held-out accuracy of every grid point."""

    weight: torch.Tensor  # k x d, float64
    bias: torch.Tensor  # k, float64
    alpha: float
    lam: float  # the ridge strength used in the final refit
    temperature: float  # multiply scores by it to get calibrated logits
    holdout_acc: dict[float, float] = field(default_factory=dict)


def holdout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the ``round(fraction * n)`` (at least 1) rows held out, fixed by ``seed``."""
    count = max(1, round(fraction * n))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[:count]] = True
    return mask


def one_hot(labels: np.ndarray, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(labels), k).double()


def chunks(n: int, size: int) -> range:
    return range(0, n, size)


def accumulate(features: np.ndarray, labels: np.ndarray, k: int, mask: np.ndarray,
               chunk: int = CHUNK) -> tuple[Moments, Moments]:
    """(moments of the rows where ``mask`` is False, of those where it is True)."""
    d = features.shape[1]
    kept, held = Moments.zeros(d, k), Moments.zeros(d, k)
    for start in chunks(len(features), chunk):
        x = torch.from_numpy(np.asarray(features[start : start + chunk], dtype=np.float64))
        y = one_hot(labels[start : start + chunk], k)
        m = torch.from_numpy(mask[start : start + chunk])
        kept.add(x[~m], y[~m])
        held.add(x[m], y[m])
    return kept, held


def feature_scale(moments: Moments) -> torch.Tensor:
    """Standard deviation of every column (1 for constant ones)."""
    return safe_std(moments.mean(), torch.diagonal(moments.sxx) / moments.n)


def strength(gram: torch.Tensor, alpha: float) -> float:
    return alpha * float(torch.trace(gram)) / len(gram)


def temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The factor T (from a log grid) minimising the cross-entropy of softmax(T * scores)."""
    losses = [float(F.cross_entropy(t * scores, labels)) for t in TEMPERATURES]
    return TEMPERATURES[int(np.argmin(losses))]


def _holdout_scores(features: np.ndarray, mask: np.ndarray, fit: Moments, mu: torch.Tensor,
                    scale: torch.Tensor, alphas: Sequence[float],
                    chunk: int) -> dict[float, torch.Tensor]:
    """Scores of the held-out rows under the ridge fit on ``fit``, for every alpha, via one
    eigendecomposition of the fit rows' Gram matrix: each alpha then costs one k-column product
    per row."""
    gram, cross = fit.centered(scale)
    eigvals, basis = torch.linalg.eigh(gram)
    projected = basis.T @ cross  # d x k
    fit_mean = (fit.mean() - mu) / scale  # the fit rows' mean in standardised units
    ybar = fit.target_mean()
    lams = [strength(gram, a) for a in alphas]
    scores: dict[float, list[torch.Tensor]] = {alpha: [] for alpha in alphas}
    rows = np.flatnonzero(mask)
    for start in chunks(len(rows), chunk):
        x = torch.from_numpy(np.asarray(features[rows[start : start + chunk]], dtype=np.float64))
        z = ((x - mu) / scale - fit_mean) @ basis
        for alpha, lam in zip(alphas, lams, strict=True):
            scores[alpha].append((z / (eigvals + lam)) @ projected + ybar)
    return {alpha: torch.cat(parts) for alpha, parts in scores.items()}


def _scores(features: np.ndarray, weight: torch.Tensor, bias: torch.Tensor,
            chunk: int) -> torch.Tensor:
    return torch.cat([torch.from_numpy(np.asarray(features[i : i + chunk], dtype=np.float64))
                      @ weight.T + bias for i in chunks(len(features), chunk)])


def fit_ridge(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
              alphas: Sequence[float] = ALPHAS, holdout: float = 0.1, seed: int = 0,
              chunk: int = CHUNK) -> RidgeFit:
    """Ridge fit of one-hot ``labels`` on ``features`` (N x d, any float dtype, may be a memmap).

    With one alpha there is nothing to choose and every row is used directly; otherwise the alpha
    with the best held-out accuracy (ties: the stronger one) is refitted on all rows.
    """
    with single_thread():
        return _fit(features, labels, num_classes, alphas, holdout, seed, chunk)


def _fit(features: np.ndarray, labels: np.ndarray, num_classes: int, alphas: Sequence[float],
         holdout: float, seed: int, chunk: int) -> RidgeFit:
    n = len(features)
    if n < 2:
        raise CacheError(f"ridge needs at least 2 training rows, got {n}")
    if not 0 < holdout < 1:
        raise CacheError(f"--holdout must be in (0, 1), got {holdout}")
    mask = holdout_mask(n, holdout, seed) if len(alphas) > 1 else np.zeros(n, dtype=bool)
    kept, held = accumulate(features, labels, num_classes, mask, chunk)
    every = kept.merged(held)
    mu, scale = every.mean(), feature_scale(every)
    if len(alphas) == 1:
        weight, bias, lam = _solve(every, mu, scale, alphas[0])
        calibration = temperature(_scores(features, weight, bias, chunk),
                                  torch.from_numpy(np.asarray(labels)))
        return RidgeFit(weight, bias, alphas[0], lam, calibration)
    scores = _holdout_scores(features, mask, kept, mu, scale, alphas, chunk)
    truth = torch.from_numpy(np.asarray(labels)[mask])
    accuracy = {a: float((s.argmax(1) == truth).double().mean()) for a, s in scores.items()}
    alpha = max(alphas, key=lambda a: (accuracy[a], a))
    weight, bias, lam = _solve(every, mu, scale, alpha)
    return RidgeFit(weight, bias, alpha, lam, temperature(scores[alpha], truth), accuracy)


def _solve(every: Moments, mu: torch.Tensor, scale: torch.Tensor,
           alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(weight k x d, bias, lambda) of the ridge fit on every row, for raw descriptors."""
    gram, cross = every.centered(scale)
    lam = strength(gram, alpha)
    factor = torch.linalg.cholesky(gram + lam * torch.eye(len(gram), dtype=gram.dtype))
    coef = torch.cholesky_solve(cross, factor)  # d x k, on standardised features
    weight = (coef / scale[:, None]).T
    return weight, every.target_mean() - weight @ mu, lam
