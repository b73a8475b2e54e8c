"""Closed-form ridge regression of one-hot targets on cached descriptors (the seed's phi = W^T X).

Only sufficient statistics are accumulated (:class:`~hfsnet.transfer.stats.Moments`), in float64
over chunks of rows, so memory does not grow with the number of rows: n, sum x, X^T X, X^T Y and
sum y. Features are standardised with the training mean and standard deviation (or only centred,
``standardize=False``, for descriptors a transform has already normalised), the intercept is not
penalised, and the ridge strength is ``alpha * trace(C) / d`` (C the scaled, centred Gram matrix)
so one grid fits any feature scale and row count.

``alpha`` is chosen on the grid either by accuracy on a held-out share of the rows (``holdout``),
then refitted on every row, or by exact leave-one-out (``loo``): for a fixed strength ridge with
an unpenalised intercept is a linear smoother y_hat = H y, H = 11^T/n + Z (Z^T Z + lam I)^-1 Z^T
(Z the centred rows), so the prediction for row i of the fit without row i is
y_i - (y_i - y_hat_i) / (1 - h_ii). One eigendecomposition of the Gram matrix gives H's diagonal
and the fitted values for every alpha in one more pass over the rows; the alpha with the best LOO
accuracy wins (ties: the lower LOO squared error, then the stronger alpha).

With ``views`` > 1 the rows are fixed copies of each image (``--train-views``, view-major: rows
i, m + i, ..., m = n / views, are image i), and a copy left in the fit would predict its left-out
twin, and the strength would be chosen far too weak (by 30x on EuroSAT with 8 views, when
first tried). So every choice leaves whole images out: the held-out share is of images, and
leave-one-out becomes leave-one-image-out, y_g - (I - H_gg)^-1 (y_g - y_hat_g) for the v x v
block H_gg of image g's rows, still exact.

With no more rows than columns (:func:`use_dual`) every solve runs in the dual: the n x n kernel
K = Z Z^T of the scaled, centred rows has the Gram matrix's nonzero eigenvalues, and
(Z^T Z + lam I)^-1 Z^T = Z^T (K + lam I)^-1, so the weights are Z^T (K + lam I)^-1 Y and H's
diagonal is 1/n + diag(K (K + lam I)^-1): the same fit, scores and chosen alpha, from an n x n
eigendecomposition instead of a d x d one. The moments are accumulated either way, for ``--add``,
unless the caller will not keep them (``keep_moments=False``): then a dual fit skips the Gram.

Regression scores of one-hot targets sit around 0..1, far too flat for a softmax, so the fit also
carries a temperature: the factor on the scores that minimises cross-entropy on the held-out rows
(on the LOO predictions with ``loo``; on the training rows when there is nothing to choose). It
leaves every argmax unchanged and makes ``predict``'s probabilities, ``evaluate``'s loss and
fine-tuning from this head start sensibly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.stats import CHUNK, Moments, Rows, as_rows, safe_std

ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))
TEMPERATURES = tuple(float(t) for t in np.logspace(-1, 3, 81))  # 12% steps
ALPHA_SELECTS = ("holdout", "loo")

__all__ = ["ALPHAS", "ALPHA_SELECTS", "Moments", "RidgeFit", "fit_ridge", "holdout_mask",
           "loo_predictions", "solve"]


@dataclass
class RidgeFit:
    """A linear map from raw descriptors to scores: ``x @ weight.T + bias`` (standardisation
    folded in), with the chosen strength, the grid's scores (held-out accuracy, or LOO accuracy
    and squared error) and the statistics of every row it was fitted on."""

    weight: torch.Tensor  # k x d, float64
    bias: torch.Tensor  # k, float64
    alpha: float
    lam: float  # the ridge strength used in the final refit
    temperature: float  # multiply scores by it to get calibrated logits
    holdout_acc: dict[float, float] = field(default_factory=dict)
    loo_acc: dict[float, float] = field(default_factory=dict)
    loo_mse: dict[float, float] = field(default_factory=dict)
    moments: Moments | None = None
    scale: torch.Tensor | None = None  # the column scale the fit divided by (ones: none)


def holdout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the ``round(fraction * n)`` (at least 1) rows held out, fixed by ``seed``."""
    count = max(1, round(fraction * n))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[:count]] = True
    return mask


def one_hot(labels: np.ndarray, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(np.asarray(labels)), k).double()


def chunks(n: int, size: int) -> range:
    return range(0, n, size)


def accumulate(features: np.ndarray | Rows, labels: np.ndarray, k: int, mask: np.ndarray,
               chunk: int = CHUNK, gram: bool = True) -> tuple[Moments, Moments]:
    """(moments of the rows where ``mask`` is False, of those where it is True); ``gram``: see
    :class:`Moments`."""
    rows = as_rows(features)
    kept, held = Moments.zeros(rows.width, k, gram=gram), Moments.zeros(rows.width, k, gram=gram)
    for start in chunks(len(rows), chunk):
        x = rows[start : start + chunk]
        y = one_hot(labels[start : start + chunk], k)
        m = torch.from_numpy(mask[start : start + chunk])
        kept.add(x[~m], y[~m])
        held.add(x[m], y[m])
    return kept, held


def feature_scale(moments: Moments, standardize: bool = True) -> torch.Tensor:
    """Standard deviation of every column (1 for constant ones); all ones without
    ``standardize``."""
    if not standardize:
        return torch.ones_like(moments.sx)
    return safe_std(moments.mean(), moments.column_squares() / moments.n)


def strength(gram: torch.Tensor, alpha: float) -> float:
    return alpha * float(torch.trace(gram)) / len(gram)


def temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The factor T (from a log grid) minimising the cross-entropy of softmax(T * scores)."""
    losses = [float(F.cross_entropy(t * scores, labels)) for t in TEMPERATURES]
    return TEMPERATURES[int(np.argmin(losses))]


def use_dual(n: int, d: int) -> bool:
    """Whether a fit on ``n`` rows of ``d`` columns is solved in the dual (n x n kernel).

    From n <= d on, the centred Gram matrix (rank at most n - 1) is mostly null space: its d x d
    eigendecomposition costs ~d^3 against ~n^3 + n^2 d for the kernel's, and the n x d rows the
    dual holds in memory take no more room than the d x d Gram matrix the moments hold anyway.
    At n = d the two cost about the same, so the boundary needs no tuning.
    """
    return n <= d


@dataclass
class _Spectrum:
    """The eigendecomposition of a fit's scaled, centred Gram matrix (the primal, d x d), and
    what every alpha's solution shares."""

    eigvals: torch.Tensor
    basis: torch.Tensor
    projected: torch.Tensor  # basis^T @ cross, d x k
    mean: torch.Tensor  # the fit rows' mean, raw units
    ybar: torch.Tensor
    scale: torch.Tensor
    trace: float
    n: int

    @classmethod
    def of(cls, moments: Moments, scale: torch.Tensor) -> _Spectrum:
        gram, cross = moments.centered(scale)
        eigvals, basis = torch.linalg.eigh(gram)
        return cls(eigvals, basis, basis.T @ cross, moments.mean(), moments.target_mean(),
                   scale, float(torch.trace(gram)), moments.n)

    def lam(self, alpha: float) -> float:
        return alpha * self.trace / len(self.eigvals)

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Raw rows in the eigenbasis, for :func:`_predict`."""
        return ((x - self.mean) / self.scale) @ self.basis

    def loo(self, rows: Rows, labels: np.ndarray, alphas: Sequence[float], chunk: int,
            views: int = 1) -> dict[float, torch.Tensor]:
        """Leave-one-image-out predictions of the fit rows (all of ``rows``), one pass over
        them: H_gg = 1/n + U_g diag(1 / (e + lam)) U_g^T, U_g image g's centred rows in the
        eigenbasis."""
        members = image_rows(len(rows), views)
        out = {alpha: torch.empty(len(rows), self.projected.shape[1], dtype=torch.float64)
               for alpha in alphas}
        per_chunk = max(1, chunk // views)  # whole images, about ``chunk`` rows
        for start in chunks(len(members), per_chunk):
            which = members[start : start + per_chunk]
            u = self.coordinates(rows[which.reshape(-1)])
            y = one_hot(labels[which.reshape(-1)], self.projected.shape[1])
            grouped = u.reshape(*which.shape, -1)
            for alpha in alphas:
                inverse = 1 / (self.eigvals + self.lam(alpha))
                blocks = torch.einsum("gvd,d,gwd->gvw", grouped, inverse, grouped) + 1 / self.n
                out[alpha][which.reshape(-1)] = _left_out(y, _predict(self, u, alpha), blocks)
        return out


@dataclass
class _DualSpectrum:
    """The eigendecomposition of a fit's kernel K = Z Z^T (the dual, n x n; Z the fit rows,
    scaled and centred at their mean) and what every alpha's solution shares. The strength is
    the primal's, alpha * trace(K) / d (trace(K) = trace(Z^T Z))."""

    eigvals: torch.Tensor
    basis: torch.Tensor  # Q, n x n
    projected: torch.Tensor  # Q^T (Y - ybar), n x k
    centred: torch.Tensor  # Z, n x d
    targets: torch.Tensor  # Y, n x k
    mean: torch.Tensor
    ybar: torch.Tensor
    scale: torch.Tensor
    trace: float

    @classmethod
    def of(cls, x: torch.Tensor, targets: torch.Tensor, moments: Moments,
           scale: torch.Tensor) -> _DualSpectrum:
        """From the fit rows ``x`` (raw, n x d), their one-hot ``targets`` and ``moments``; the
        means are the moments', as the primal's and the bias's are."""
        mean, ybar = moments.mean(), moments.target_mean()
        centred = (x - mean) / scale
        kernel = centred @ centred.T
        eigvals, basis = torch.linalg.eigh(kernel)
        # K is positive semi-definite: a rounding-negative eigenvalue would give the null space
        # (at least the constant vector, as the rows are centred) a leverage below zero
        eigvals = eigvals.clamp(min=0)
        return cls(eigvals, basis, basis.T @ (targets - ybar), centred, targets, mean, ybar,
                   scale, float(torch.trace(kernel)))

    def lam(self, alpha: float) -> float:
        return alpha * self.trace / self.centred.shape[1]

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Raw rows as z Z^T Q (their kernel with the fit rows, in K's eigenbasis), so that
        :func:`_predict` gives z Z^T (K + lam I)^-1 Y_c, the primal's
        z (Z^T Z + lam I)^-1 Z^T Y_c."""
        return ((x - self.mean) / self.scale) @ self.centred.T @ self.basis

    def solution(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(weight k x d, bias, lambda) for raw descriptors, as :func:`solve` returns them:
        the scaled coefficients are Z^T (K + lam I)^-1 Y_c."""
        lam = self.lam(alpha)
        dual = self.basis @ (self.projected / (self.eigvals + lam)[:, None])
        weight = ((self.centred.T @ dual) / self.scale[:, None]).T
        return weight, self.ybar - weight @ self.mean, lam

    def loo(self, alphas: Sequence[float], views: int = 1) -> dict[float, torch.Tensor]:
        """Leave-one-image-out predictions of the fit rows: the fitted values are
        ybar + Q S (S + lam)^-1 Q^T Y_c and H_gg = 1/n + Q_g S (S + lam)^-1 Q_g^T, from
        H = 11^T/n + K (K + lam I)^-1."""
        which = image_rows(len(self.basis), views).reshape(-1)
        grouped = self.basis[which].reshape(-1, views, len(self.basis))
        out = {}
        for alpha in alphas:
            shrink = self.eigvals / (self.eigvals + self.lam(alpha))
            fitted = self.basis @ (shrink[:, None] * self.projected) + self.ybar
            blocks = torch.einsum("gvn,n,gwn->gvw", grouped, shrink, grouped) + 1 / len(
                self.basis)
            left = torch.empty_like(fitted)
            left[which] = _left_out(self.targets[which], fitted[which], blocks)
            out[alpha] = left
        return out


def _predict(spectrum: _Spectrum | _DualSpectrum, coordinates: torch.Tensor,
             alpha: float) -> torch.Tensor:
    """Scores of rows given as ``spectrum.coordinates`` under its fit with strength ``alpha``."""
    inverse = 1 / (spectrum.eigvals + spectrum.lam(alpha))
    return (coordinates * inverse) @ spectrum.projected + spectrum.ybar


def image_rows(n: int, views: int) -> np.ndarray:
    """(n / views) x views: the rows of each image, view-major (row v * m + i is image i)."""
    if n % views:
        raise CacheError(f"{n} training rows are not {views} views of each image")
    return np.arange(n).reshape(views, n // views).T


def _left_out(y: torch.Tensor, fitted: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """A linear smoother's prediction of each image's rows (``y``, ``fitted``: grouped by image,
    ``views`` rows each, flat) by the fit without them; ``blocks``: the images' v x v blocks of
    the smoother matrix H. One view: y - (y - y_hat) / (1 - h_ii)."""
    views = blocks.shape[-1]
    if views == 1:
        return y - (y - fitted) / (1 - blocks[:, 0]).clamp(min=1e-12)
    k = y.shape[1]
    resid = (y - fitted).reshape(-1, views, k)
    eye = torch.eye(views, dtype=blocks.dtype)
    return y - torch.linalg.solve(eye - blocks, resid).reshape(-1, k)


@dataclass
class _Problem:
    """The rows of one fit, with their labels and column scale, and whether it is solved in the
    dual (:func:`use_dual`)."""

    rows: Rows
    labels: np.ndarray
    k: int
    scale: torch.Tensor
    chunk: int
    dual: bool
    views: int = 1  # fixed copies of each image, view-major (image_rows)

    def spectrum(self, moments: Moments, which: np.ndarray) -> _Spectrum | _DualSpectrum:
        """The spectrum of the fit on the rows ``which``, whose moments are ``moments``."""
        if not self.dual:
            return _Spectrum.of(moments, self.scale)
        x = torch.cat([self.rows[which[start : start + self.chunk]]
                       for start in chunks(len(which), self.chunk)])
        return _DualSpectrum.of(x, one_hot(self.labels[which], self.k), moments, self.scale)

    def solve(self, every: Moments, alpha: float,
              spectrum: _Spectrum | _DualSpectrum | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """:func:`solve` on every row, in the dual from ``spectrum`` (of every row) if given."""
        if not self.dual:
            return solve(every, alpha, self.scale)
        if not isinstance(spectrum, _DualSpectrum):
            spectrum = self.spectrum(every, np.arange(len(self.rows)))
        return spectrum.solution(alpha)

    def loo(self, spectrum: _Spectrum | _DualSpectrum,
            alphas: Sequence[float]) -> dict[float, torch.Tensor]:
        if isinstance(spectrum, _DualSpectrum):
            return spectrum.loo(alphas, self.views)
        return spectrum.loo(self.rows, self.labels, alphas, self.chunk, self.views)


def _holdout_scores(problem: _Problem, mask: np.ndarray, spectrum: _Spectrum | _DualSpectrum,
                    alphas: Sequence[float]) -> dict[float, torch.Tensor]:
    """Scores of the held-out rows under the ridge fit ``spectrum`` (of the other rows), for
    every alpha: each alpha costs one k-column product per row."""
    scores: dict[float, list[torch.Tensor]] = {alpha: [] for alpha in alphas}
    held = np.flatnonzero(mask)
    for start in chunks(len(held), problem.chunk):
        z = spectrum.coordinates(problem.rows[held[start : start + problem.chunk]])
        for alpha in alphas:
            scores[alpha].append(_predict(spectrum, z, alpha))
    return {alpha: torch.cat(parts) for alpha, parts in scores.items()}


def loo_predictions(features: np.ndarray | Rows, labels: np.ndarray, every: Moments,
                    scale: torch.Tensor, alphas: Sequence[float],
                    chunk: int = CHUNK) -> dict[float, torch.Tensor]:
    """For every alpha, the N x k predictions of each row by the ridge fit on all the other
    rows (``every``: the moments of all rows; ``scale``: the column scale, fixed), exactly, from
    H's diagonal, in the primal or the dual as :func:`use_dual` says."""
    rows = as_rows(features)
    problem = _Problem(rows, np.asarray(labels), every.sxy.shape[1], scale, chunk,
                       use_dual(len(rows), rows.width))
    return problem.loo(problem.spectrum(every, np.arange(len(rows))), alphas)


def _scores(rows: Rows, weight: torch.Tensor, bias: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([rows[i : i + chunk] @ weight.T + bias for i in chunks(len(rows), chunk)])


def fit_ridge(features: np.ndarray | Rows, labels: np.ndarray, num_classes: int, *,
              alphas: Sequence[float] = ALPHAS, holdout: float = 0.1, seed: int = 0,
              chunk: int = CHUNK, standardize: bool = True,
              alpha_select: str = "holdout", views: int = 1,
              keep_moments: bool = True) -> RidgeFit:
    """Ridge fit of one-hot ``labels`` on ``features`` (N x d, any float dtype, may be a memmap,
    or :class:`~hfsnet.transfer.stats.Rows` reading them through a transform).

    With one alpha there is nothing to choose and every row is used directly; otherwise the alpha
    chosen by ``alpha_select`` (see the module docstring) is refitted on all rows. The fit runs in
    the primal or, with no more rows than columns, the dual (:func:`use_dual`). ``views``: the
    rows are that many fixed copies of each image, view-major; choices leave whole images out.
    ``keep_moments`` False: the caller will not save the moments (for ``--add``), so a dual fit
    skips the d x d Gram matrix (:class:`Moments`) and returns none.

    It runs on torch's threads (``--threads``): its time is a few large eigendecompositions and
    products, which two threads ran 1.5-1.75x faster than one on the quiet 2-core AVX2 EPYC for
    view and 2x2 heads, 1.35x for the plain gap head, to the same weights and strength
    (`benchmarks/ridge_threads.py`, results/ridge_threads-epyc-avx2.json; adapt's caches at 100
    per class: EuroSAT with 8 dihedral views 10.5 s vs 6.1 s, with --expand 2048 45.6 s vs 26.8
    s, CIFAR-10 2x2 7.4 s vs 4.4 s, gap 0.9 s vs 0.7 s). It ran on one thread until then,
    chosen under load average 6 (ridge on 50,000 x 600 took 4.6-19.8 s on two threads against
    2.0-2.9 s on one): on a machine that busy, ``--threads 1``.
    """
    rows, labels = as_rows(features), np.asarray(labels)
    n = len(rows)
    if n < 2:
        raise CacheError(f"ridge needs at least 2 training rows, got {n}")
    if not 0 < holdout < 1:
        raise CacheError(f"--holdout must be in (0, 1), got {holdout}")
    if alpha_select not in ALPHA_SELECTS:
        raise CacheError(f"--alpha-select must be one of {ALPHA_SELECTS}, got {alpha_select!r}")
    by_holdout = len(alphas) > 1 and alpha_select == "holdout"
    images = image_rows(n, views)
    mask = (np.tile(holdout_mask(len(images), holdout, seed), views) if by_holdout
            else np.zeros(n, dtype=bool))
    dual = use_dual(n, rows.width)
    kept, held = accumulate(rows, labels, num_classes, mask, chunk,
                            gram=keep_moments or not dual)
    every = kept.merged(held)
    scale = feature_scale(every, standardize)
    problem = _Problem(rows, labels, num_classes, scale, chunk, dual, views)
    saved = every if every.has_gram else None
    truth = torch.from_numpy(labels)
    if len(alphas) == 1:
        weight, bias, lam = problem.solve(every, alphas[0])
        calibration = temperature(_scores(rows, weight, bias, chunk), truth)
        return RidgeFit(weight, bias, alphas[0], lam, calibration, moments=saved, scale=scale)
    if by_holdout:
        spectrum = problem.spectrum(kept, np.flatnonzero(~mask))
        scores = _holdout_scores(problem, mask, spectrum, alphas)
        truth = truth[torch.from_numpy(mask)]
        accuracy = {a: _accuracy(s, truth) for a, s in scores.items()}
        alpha = max(alphas, key=lambda a: (accuracy[a], a))
        weight, bias, lam = problem.solve(every, alpha)
        return RidgeFit(weight, bias, alpha, lam, temperature(scores[alpha], truth), accuracy,
                        moments=saved, scale=scale)
    spectrum = problem.spectrum(every, np.arange(n))
    scores = problem.loo(spectrum, alphas)
    target = one_hot(labels, num_classes)
    accuracy = {a: _accuracy(s, truth) for a, s in scores.items()}
    error = {a: float(((s - target) ** 2).sum(1).mean()) for a, s in scores.items()}
    alpha = max(alphas, key=lambda a: (accuracy[a], -error[a], a))
    weight, bias, lam = problem.solve(every, alpha, spectrum)
    return RidgeFit(weight, bias, alpha, lam, temperature(scores[alpha], truth),
                    loo_acc=accuracy, loo_mse=error, moments=saved, scale=scale)


def _accuracy(scores: torch.Tensor, truth: torch.Tensor) -> float:
    return float((scores.argmax(1) == truth).double().mean())


def solve(every: Moments, alpha: float,
          scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(weight k x d, bias, lambda) of the ridge fit with these moments, for raw descriptors;
    ``scale``: the column scale the penalty is applied in (:func:`feature_scale`)."""
    gram, cross = every.centered(scale)
    lam = strength(gram, alpha)
    factor = torch.linalg.cholesky(gram + lam * torch.eye(len(gram), dtype=gram.dtype))
    coef = torch.cholesky_solve(cross, factor)  # d x k, on scaled features
    weight = (coef / scale[:, None]).T
    return weight, every.target_mean() - weight @ every.mean(), lam
