"""Statistics of cached descriptors, in float64 over chunks of rows: column statistics, the
sufficient statistics of a ridge fit (:class:`Moments`), and :class:`Rows`, the float64 view of
descriptors (optionally through a fixed transform) that both read chunk by chunk.

A ridge head's moments are saved beside its checkpoint (``ridge-stats.safetensors``: the float64
tensors, and as JSON metadata what produced them) so that ``fit-head --add`` can add rows and
classes without the old images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from hfsnet.transfer.errors import CacheError

CHUNK = 8192  # rows converted to float64 at a time: 8192 x 2400 columns is 157 MB
STATS_NAME = "ridge-stats.safetensors"
STATS_FORMAT = 1
_META_KEY = "hfsnet_ridge_stats"


class Rows:
    """Descriptors (N x d, any float dtype, may be a memmap) read as float64 tensors, through
    ``transform`` when given (a fixed map such as a head's descriptor transform), so a fit over
    transformed descriptors never holds more than one chunk of them."""

    def __init__(self, features: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.features = features
        self.transform = transform
        self.width = int(features.shape[1]) if transform is None else int(
            transform(self._raw(slice(0, 1))).shape[1])

    def __len__(self) -> int:
        return len(self.features)

    def _raw(self, index: slice | np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.features[index], dtype=np.float64))

    def __getitem__(self, index: slice | np.ndarray) -> torch.Tensor:
        x = self._raw(index)
        if self.transform is None:
            return x
        with torch.no_grad():
            return self.transform(x)


def as_rows(features: np.ndarray | Rows) -> Rows:
    return features if isinstance(features, Rows) else Rows(features)


@dataclass
class Moments:
    """Sufficient statistics of rows x (d) and one-hot targets y (k), float64.

    ``sxx`` is the d x d Gram matrix, or (built with ``gram=False``) only its diagonal, the
    column sums of squares: all a fit solved in the dual needs, without the d^2 n product. On
    `hfsnet adapt`'s caches at 100/class that took the ridge fit of CIFAR-10 2x2 + flip (2,000 x
    12,352) from 17.3 to 4.5 s and of Fashion-MNIST 2x2 (1,000 x 12,352) from 7.9 to 1.2 s, the
    same weights (benchmarks/ridge_threads.py --moments keep,skip,
    results/ridge_moments-epyc-avx2.json). Such moments cannot be saved for ``--add`` nor
    solved in the primal."""

    sx: torch.Tensor
    sxx: torch.Tensor
    sxy: torch.Tensor
    sy: torch.Tensor
    n: int = 0

    @classmethod
    def zeros(cls, d: int, k: int, *, gram: bool = True) -> Moments:
        f64 = torch.float64
        return cls(torch.zeros(d, dtype=f64), torch.zeros((d, d) if gram else d, dtype=f64),
                   torch.zeros(d, k, dtype=f64), torch.zeros(k, dtype=f64))

    @property
    def has_gram(self) -> bool:
        return self.sxx.dim() == 2

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.n += len(x)
        self.sx += x.sum(0)
        self.sxx += x.T @ x if self.has_gram else (x * x).sum(0)
        self.sxy += x.T @ y
        self.sy += y.sum(0)

    def column_squares(self) -> torch.Tensor:
        """The sum of squares of every column."""
        return torch.diagonal(self.sxx) if self.has_gram else self.sxx

    def merged(self, other: Moments) -> Moments:
        return Moments(self.sx + other.sx, self.sxx + other.sxx, self.sxy + other.sxy,
                       self.sy + other.sy, self.n + other.n)

    def with_classes(self, k: int) -> Moments:
        """The same rows with ``k`` target columns: the new classes' columns are zero, as the
        one-hot targets of rows of the old classes are."""
        extra = k - len(self.sy)
        if extra < 0:
            raise ValueError(f"cannot drop target columns ({len(self.sy)} -> {k})")
        return Moments(self.sx.clone(), self.sxx.clone(),
                       torch.cat([self.sxy, self.sxy.new_zeros(len(self.sx), extra)], 1),
                       torch.cat([self.sy, self.sy.new_zeros(extra)]), self.n)

    def mean(self) -> torch.Tensor:
        return self.sx / self.n

    def target_mean(self) -> torch.Tensor:
        return self.sy / self.n

    def centered(self, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gram and cross matrices of ``x / scale`` centred at this part's own mean."""
        if not self.has_gram:
            raise ValueError("these moments hold no Gram matrix (built with gram=False)")
        mu, ybar = self.mean(), self.target_mean()
        gram = (self.sxx - self.n * torch.outer(mu, mu)) / torch.outer(scale, scale)
        cross = (self.sxy - self.n * torch.outer(mu, ybar)) / scale[:, None]
        return gram, cross


def safe_std(mean: torch.Tensor, mean_square: torch.Tensor) -> torch.Tensor:
    """Standard deviation from E[x] and E[x^2]; 1 for (numerically) constant columns such as dead
    units, which standardisation must leave alone instead of dividing by ~0."""
    std = (mean_square - mean**2).clamp(min=0).sqrt()
    constant = std <= 1e-8 + 1e-6 * mean.abs()
    return torch.where(constant, torch.ones_like(std), std)


def column_stats(features: np.ndarray | Rows,
                 chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard deviation) of every column, float64."""
    rows = as_rows(features)
    total = torch.zeros(rows.width, dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(rows), chunk):
        x = rows[start : start + chunk]
        total += x.sum(0)
        squares += (x * x).sum(0)
    mean = total / len(rows)
    return mean, safe_std(mean, squares / len(rows))


@dataclass
class RidgeState:
    """A ridge head's moments (of the rows as its linear layer reads them) and what produced
    them: ``meta`` holds the class names, alpha, temperature, whether columns were standardised,
    the trunk, preprocessing, levels, pooling, descriptor width and transform settings."""

    moments: Moments
    meta: dict[str, Any]


def state_bytes(state: RidgeState) -> bytes:
    """The ridge statistics file (``STATS_NAME``) as bytes; ``load_state`` reads it."""
    m = state.moments
    tensors = {"sx": m.sx, "sxx": m.sxx, "sxy": m.sxy, "sy": m.sy,
               "n": torch.tensor([m.n], dtype=torch.int64)}
    meta = {**state.meta, "format_version": STATS_FORMAT}
    return st_save({k: v.contiguous() for k, v in tensors.items()},
                   metadata={_META_KEY: json.dumps(meta)})


def load_state(path: Path) -> RidgeState:
    """The statistics file at ``path``, checked for its tensors' presence, dtypes and shapes."""
    if not path.is_file():
        raise CacheError(f"{path}: no ridge statistics file: --add needs the output directory "
                         f"of a ridge fit-head, which writes {STATS_NAME} beside its checkpoint")
    try:
        with safe_open(str(path), framework="pt") as file:
            meta = json.loads((file.metadata() or {})[_META_KEY])
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as err:
        raise CacheError(f"{path}: unreadable ridge statistics ({err})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != STATS_FORMAT:
        raise CacheError(f"{path}: not a version-{STATS_FORMAT} ridge statistics file")
    try:
        moments = Moments(tensors["sx"], tensors["sxx"], tensors["sxy"], tensors["sy"],
                          int(tensors["n"][0]))
    except (KeyError, IndexError) as err:
        raise CacheError(f"{path}: ridge statistics lack {err}") from None
    d, k = len(moments.sx), len(moments.sy)
    shapes_ok = (moments.sxx.shape == (d, d) and moments.sxy.shape == (d, k)
                 and all(t.dtype == torch.float64 for t in (moments.sx, moments.sxx,
                                                            moments.sxy, moments.sy)))
    if not shapes_ok or len(meta.get("classes", ())) != k or moments.n < 1:
        raise CacheError(f"{path}: inconsistent ridge statistics (shapes or class count)")
    return RidgeState(moments, meta)
