"""Bootstrap draws of a class-mean Fréchet distance when the sides hold thousands of wide classes.

A bootstrap draw resamples the classes of each side with replacement and
scores the resampled partition exactly (:func:`oodml.splits.levels.bootstrap_interval`,
:func:`oodml.splits.adjacent.paired_draws`).  In the moment form one draw costs
two ``n x d x d`` weighted scatter products and a ``d x d`` eigenvalue problem:
about 0.1 s at 1,000 classes of 512-d, 1-4 s at SOP scale (5,659 classes per
side, 2,048-d) on an idle core, so the 8 levels' intervals and the adjacent-level
comparison (200 draws each) would take hours there.

The draws are made cheap by a **calibrated linearisation** in the class weights.
A resample gives each class of a side a count ``w`` (0, 1, 2, ...); the distance
of the resampled partition is a smooth function ``F(w1, w2)`` of those counts
(weighted means and scatters; ``n = sum w``), and the partition itself is
``w = 1``.  With ``K1 = L L^T`` and ``L^T K2 L = V diag(lam) V^T`` (one
eigendecomposition, :func:`oodml.splits.distance._decompose`) its gradient is
exact and costs a few ``n x d x d`` products (:func:`weight_gradient`), so the
first-order value of a draw is one dot product per side.  First order alone is
not enough: duplicated classes bias a Fréchet distance upwards by an amount
that varies from draw to draw (a second-order effect), which on near-random
splits is as large as the first-order spread.  So the first
:data:`CALIBRATION_DRAWS` draws of each partition are scored exactly, their
residuals from the linear value are regressed on ``sum (w - 1)^2`` (the part of
the duplication bias that follows how many duplicates a draw has), and every
later draw ``b`` is ``linear + regression + residual[b mod CALIBRATION_DRAWS]``:
the calibration draws' leftover residuals reused in turn, taking them to be
independent of the linear part (their variances add up to the exact draws'
to within a few per cent in the measurements below).  The first
``CALIBRATION_DRAWS`` values are the exact draws themselves; the residual taken
by draw ``b`` is that of the same calibration draw for every partition, so paired
draws of adjacent levels keep their correlation.  One calibration serves every
bootstrap of a partition (:func:`calibrated`): ``make-splits`` compares adjacent
levels first, so their paired draws calibrate each level and its interval's
draws then need no exact draw of their own.

Used only where it pays and was measured: both sides with more classes than
feature dimensions (the moment form) and features at least
:data:`LINEARISED_MIN_DIM` wide.  Everything narrower, and so every published
split set, keeps the exact draws.  Measured against the exact bootstrap pooled
over 5 x 200 draws (``tools/bench_splits.py --bootstrap-check 1400 512``:
1,400 synthetic SOP-like class means of 512-d, a random half split, the hardest
case since there the distance is mostly duplication bias): interval endpoints
off by 0.19 (worst of 5 seeds 0.26) of the pooled interval's half-width, 1.4%
of the distance, with the default 20 calibration draws; 0.17 (0.33) with 10;
0.63 for the first-order values alone.  200 exact draws of one seed differ
from the pool by 0.07 (0.11), understated since each is a fifth of the pool
(single seeds differed from each other by 0.06-0.36).  Its weak spot is a
distance near 0 in few dimensions, where the duplication bias dwarfs the
first-order spread and 20 residuals sample it poorly: on a random split of
800 classes of 16-d (distance 0.7, draws' median 1.7) an upper endpoint came
out 1.8 half-widths off; the size rule above keeps such features on the exact
draws.  Calibrated by paired draws instead (as ``make-splits`` does), the same
check gave 0.17 (0.31).  At SOP scale (5,659 classes per side, 2,048-d, one idle
core) a gradient costs about 6 s and an exact draw about 2 s, so calibrating
the 8 levels takes about 7 minutes and the 200 draws of every interval and of
the comparison add seconds, against about 1 hour of exact draws per 200 x 8
(docs/scaling.md, "make-splits at SOP scale").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.linalg

from ..shift import frechet_from_terms
from .distance import MeanFID, Partition, Scorer, _cuda, _decompose, _fid_of_sides, _Side

#: Feature width from which many-class bootstrap draws are linearised (below it an exact draw is cheap).
LINEARISED_MIN_DIM = 512
#: Exact draws per partition that calibrate its linearised draws (the first ones drawn).
CALIBRATION_DRAWS = 20


def weight_gradient(means: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The class-mean FID of a partition and its gradient in the class weights of each side, at weights 1.

    With weights ``w`` a side's mean is ``sum w x / n`` and its covariance
    ``sum w (x - m)(x - m)^T / (n - 1)``, ``n = sum w``.  The trace term
    ``T = tr (K1 K2)^(1/2)`` has ``dT/dK1 = (1/2) L^-T V lam^(1/2) V^T L^-1`` and
    ``dT/dK2 = (1/2) L V lam^(-1/2) V^T L^T`` (``K1 = L L^T``, ``L^T K2 L = V lam V^T``),
    and a class's weight moves its side's scatter by ``(x - m)(x - m)^T``.

    Args:
        means: (C, d) class means, float64.
        train, test: class indices of the two sides, distinct, each more than ``d`` of them.

    Returns:
        ``(distance, grad_train (n1,), grad_test (n2,))`` in squared feature units (per unit of weight).

    Raises:
        np.linalg.LinAlgError: a side's scatter is not (well-conditioned) positive definite.
    """
    a, b = means[train], means[test]
    n1, n2 = len(a), len(b)
    m1, m2 = a.mean(0), b.mean(0)
    c1, c2 = a - m1, b - m2
    factor, lam, vec = _decompose(c1.T @ c1, c2.T @ c2, _cuda())
    root = np.sqrt(lam)
    p = vec.T @ scipy.linalg.solve_triangular(factor, c1.T, lower=True, check_finite=False)  # V^T L^-1 (x - m1)
    q = vec.T @ scipy.linalg.blas.dtrmm(1.0, factor, c2.T, lower=1, trans_a=1)  # (d, n2): V^T L^T (x - m2)
    norm = np.sqrt((n1 - 1) * (n2 - 1))
    cross = root.sum() / norm
    sq1, sq2 = np.einsum("ij,ij->i", c1, c1), np.einsum("ij,ij->i", c2, c2)
    tr1, tr2 = sq1.sum() / (n1 - 1), sq2.sum() / (n2 - 1)
    diff = m1 - m2
    distance = frechet_from_terms(float(diff @ diff), tr1, tr2, cross)
    t1 = 0.5 * root @ (p * p)              # dT/dw of a train class: (1/2) |lam^(1/4) V^T L^-1 (x - m1)|^2
    t2 = 0.5 * (1 / root) @ (q * q)        # of a test class: (1/2) |lam^(-1/4) V^T L^T (x - m2)|^2
    grad1 = 2 * (c1 @ diff) / n1 + (sq1 - tr1) / (n1 - 1) - 2 * t1 / norm + cross / (n1 - 1)
    grad2 = -2 * (c2 @ diff) / n2 + (sq2 - tr2) / (n2 - 1) - 2 * t2 / norm + cross / (n2 - 1)
    return distance, grad1, grad2


def linearised(scorer: Scorer, partition: Partition) -> bool:
    """Whether the bootstrap draws of ``partition`` are linearised (module docstring): class-mean FID, both
    sides above the feature width, features at least :data:`LINEARISED_MIN_DIM` wide."""
    if not isinstance(scorer, MeanFID):
        return False
    d = scorer.means.shape[1]
    return d >= LINEARISED_MIN_DIM and min(len(partition[0]), len(partition[1])) > d


def resample_distance(means: np.ndarray, part: Partition, device: str | None = None) -> float:
    """The exact class-mean FID of a resample (classes repeated), each distinct class once with its count as weight.

    Equals :meth:`MeanFID.distances` of ``part`` (the moment form) up to rounding, with about 1/e fewer rows
    in the scatter products (a resample holds about 63% of its classes).  With ``device`` (a torch device
    name; the calibration passes ``"cuda"`` when a GPU is there) the scatter products and the trace term run
    there in float64, the same arithmetic as on the CPU.
    """
    sides = []
    for classes in part:
        unique, counts = np.unique(np.asarray(classes, np.int64), return_counts=True)
        sides.append((means[unique], counts))
    if device is None:
        return _fid_of_sides(*(_weighted_side(rows, counts) for rows, counts in sides))
    import torch

    stats = []
    for rows, counts in sides:
        x = torch.from_numpy(rows).to(device)
        w = torch.from_numpy(counts.astype(np.float64)).to(device)
        weighted = x * w.sqrt()[:, None]
        n, total = float(counts.sum()), w @ x
        mean = total / n
        stats.append((mean, (weighted.T @ weighted - torch.outer(total, mean)) / (n - 1)))
    (mu1, cov1), (mu2, cov2) = stats
    factor, info = torch.linalg.cholesky_ex(cov1)
    if int(info):             # not positive definite: the CPU path's fallback (shift.trace_sqrt_of_product)
        return _fid_of_sides(*(_weighted_side(rows, counts) for rows, counts in sides))
    m = factor.T @ cov2 @ factor
    cross = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return frechet_from_terms(float(diff @ diff), float(cov1.trace()), float(cov2.trace()), float(cross))


def _weighted_side(rows: np.ndarray, counts: np.ndarray) -> _Side:
    """A side of distinct class means ``rows`` (k, d), each counted ``counts`` (k,) times, in the moment form."""
    weighted = rows * np.sqrt(counts)[:, None]
    return _Side(int(counts.sum()), counts @ rows, weighted.T @ weighted)


def calibrated(scorer: MeanFID, partition: Partition) -> _Calibrated | None:
    """``partition``'s calibrated linearisation, kept on ``scorer`` so that every bootstrap of it shares one.

    The adjacent-level comparison and a level's interval resample the same
    partition: the draws that come first calibrate it (:data:`CALIBRATION_DRAWS`
    exact ones, paired across levels when the comparison comes first, as in
    ``make-splits``) and all later draws, of either, reuse its gradient,
    regression and residuals.  None when a side's scatter is singular (its
    draws stay exact).
    """
    cache = vars(scorer).setdefault("_calibrated", {})
    key = tuple(np.sort(np.asarray(side, np.int64)).tobytes() for side in partition)
    if key not in cache:
        try:
            cache[key] = _Calibrated(scorer, partition)
        except np.linalg.LinAlgError:     # singular scatters: this partition's draws stay exact
            cache[key] = None
    return cache[key]


class _Calibrated:
    """One partition's linearised draws: the gradient, then the calibration residuals as they come."""

    def __init__(self, scorer: MeanFID, partition: Partition):
        self.train, self.test = (np.sort(np.asarray(side, np.int64)) for side in partition)
        self.distance, grad_train, grad_test = weight_gradient(scorer.means, *partition)
        self.grad_train = grad_train[np.argsort(np.asarray(partition[0]), kind="stable")]
        self.grad_test = grad_test[np.argsort(np.asarray(partition[1]), kind="stable")]
        self.residuals: list[float] = []
        self.features: list[float] = []
        self.drawn = 0
        self._fit: tuple[np.ndarray, np.ndarray] | None = None

    def contains(self, part: Partition) -> int | None:
        """How many of this partition's classes ``part`` leaves out, or None when it is no resample of it."""
        missing = 0
        for side, classes in ((self.train, part[0]), (self.test, part[1])):
            present = np.unique(np.asarray(classes, np.int64))
            pos = np.searchsorted(side, present)
            if (pos >= len(side)).any() or (side[np.minimum(pos, len(side) - 1)] != present).any():
                return None
            missing += len(side) - len(present)
        return missing

    def linear(self, part: Partition) -> tuple[float, float]:
        """``(first-order value, sum (w - 1)^2)`` of the resample ``part``."""
        out, feature = self.distance, 0.0
        for side, grad, classes in ((self.train, self.grad_train, part[0]), (self.test, self.grad_test, part[1])):
            delta = np.bincount(np.searchsorted(side, np.asarray(classes, np.int64)), minlength=len(side)) - 1.0
            out += float(delta @ grad)
            feature += float(delta @ delta)
        return out, feature

    def fitted(self) -> tuple[np.ndarray, np.ndarray]:
        """``(coefficients (2,), leftover residuals (CALIBRATION_DRAWS,))`` of the calibration regression."""
        if self._fit is None:
            residuals, features = np.array(self.residuals), np.array(self.features)
            design = np.c_[np.ones(len(features)), features]
            coef = np.linalg.lstsq(design, residuals, rcond=None)[0]
            self._fit = (coef, residuals - design @ coef)
        return self._fit


def resample_distances(scorer: Scorer, partitions: Sequence[Partition]) -> Callable[[Sequence[Partition]], np.ndarray]:
    """A ``distances`` function for bootstrap draws of ``partitions``: exact, or calibrated-linear at scale.

    The function scores a batch of partitions, each one of ``partitions`` or a
    resample of one (its classes, some repeated, some left out), one value
    each.  Where :func:`linearised` says so, a resample is attributed to the
    partition it resamples (the one containing all its classes that it leaves
    fewest of out; the first on ties), the first :data:`CALIBRATION_DRAWS`
    resamples of each are scored exactly and the later ones as the module
    docstring says, in the order they are scored.  Otherwise (and for the
    partitions themselves) it is ``scorer.distances``.
    """
    wanted = [i for i, part in enumerate(partitions) if linearised(scorer, part)]
    return _ResampledDistances(scorer, partitions, wanted) if wanted else scorer.distances


class _ResampledDistances:
    """:func:`resample_distances`' function once some partitions are linearised (``wanted``, their positions)."""

    def __init__(self, scorer: Scorer, partitions: Sequence[Partition], wanted: list[int]):
        self.scorer, self.partitions, self.wanted = scorer, partitions, wanted
        self.models: dict[int, _Calibrated | None] = {}

    def model(self, i: int) -> _Calibrated | None:
        """Partition ``i``'s calibrated linearisation (:func:`calibrated`; None: singular scatters, exact)."""
        if i not in self.models:
            self.models[i] = calibrated(self.scorer, self.partitions[i])
        return self.models[i]

    def owner(self, part: Partition) -> tuple[_Calibrated | None, int | None]:
        """``(model, classes left out)`` of the partition ``part`` resamples (None, None: it resamples none)."""
        best, fewest = None, None
        for i in self.wanted:
            m = self.model(i)
            missing = None if m is None else m.contains(part)
            if missing is not None and (fewest is None or missing < fewest):
                best, fewest = m, missing
        return best, fewest

    def __call__(self, batch: Sequence[Partition]) -> np.ndarray:
        out = np.full(len(batch), np.nan)
        drawn = []                           # (position, model, linear value, feature, draw index)
        for k, part in enumerate(batch):
            m, missing = self.owner(part)
            if m is not None and missing == 0 and (len(part[0]), len(part[1])) == (len(m.train), len(m.test)):
                out[k] = m.distance          # the partition itself: its exact distance, from the gradient's work
            elif m is not None and missing:
                drawn.append((k, m, *m.linear(part), m.drawn))
                m.drawn += 1
        owned = {k for k, *_ in drawn} | set(np.flatnonzero(~np.isnan(out)).tolist())
        others = [k for k in range(len(batch)) if k not in owned]
        if others:
            out[others] = self.scorer.distances([batch[k] for k in others])
        self._calibrate(batch, drawn, out)
        for k, m, value, feature, b in drawn:
            if b >= CALIBRATION_DRAWS:
                coef, left = m.fitted()
                out[k] = value + coef[0] + coef[1] * feature + left[b % len(left)]
        return out

    def _calibrate(self, batch: Sequence[Partition], drawn: list[tuple], out: np.ndarray) -> None:
        """The first :data:`CALIBRATION_DRAWS` resamples of each model: scored exactly (weighted moment form)
        into ``out``, their residuals from the linear value kept for the fit."""
        for k, m, value, feature, b in drawn:
            if b < CALIBRATION_DRAWS:   # resamples of partitions in the moment form: weighted, exact
                out[k] = resample_distance(self.scorer.means, batch[k], _cuda())
                m.residuals.append(float(out[k]) - value)
                m.features.append(feature)
