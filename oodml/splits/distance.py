"""Scoring train/test class partitions fast enough to search over swaps.

A *partition* is a pair of int arrays (train class indices, test class
indices) and a :class:`Move` changes one: some positions leave each side and
either change sides or are removed.  A scorer gives the exact distance of
partitions, the exact distances of a batch of moves from one partition, and a
cheap screen that ranks all single swaps so that only a shortlist needs exact
evaluation.  The screen is the ooDML centroid heuristic: on synthetic class
means its swap gains correlate with the exact ones at 0.97-0.99, while a
first-order expansion of the nuclear norm managed only about 0.4 (a swap
replaces a whole row and column of the cross matrix, which is no small
perturbation).

:class:`MeanFID` is the fast path (class-mean mode, Fréchet distance).  It
takes whichever exact form is cheaper: with at most ``d`` classes on a side,
every quantity is read off the Gram matrix of the class means (an
``n_train x n_test`` SVD per partition, whatever the feature width); with more,
each side is summarised by its class count, sum and ``d x d`` second moment,
which a move updates by a low-rank correction, so a candidate costs one
``d x d`` Cholesky factorisation and one symmetric eigenvalue problem however
many classes there are.  :class:`GenericScorer` serves every other distance and
mode through :func:`oodml.shift.split_distance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg

from ..errors import OodmlError
from ..shift import ClassFeatures, frechet_from_terms, split_distance, trace_sqrt_of_product

Partition = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Move:
    """A change to a partition, by positions in its two arrays.

    The classes at ``train_out`` leave the train side and those at ``test_out``
    the test side.  With ``swap`` (equal lengths) the k-th of each takes the
    other's position; otherwise both are removed from the split.
    """

    train_out: np.ndarray
    test_out: np.ndarray
    swap: bool = True

    def first(self, k: int) -> Move:
        """The move made of the first ``k`` positions of each side (a swap's first ``k`` pairs)."""
        return Move(self.train_out[:k], self.test_out[:k], self.swap)

    def sizes(self, n_train: int, n_test: int) -> tuple[int, int]:
        """Class counts of the two sides after the move."""
        if self.swap:
            return n_train, n_test
        return n_train - len(self.train_out), n_test - len(self.test_out)

    def apply(self, train: np.ndarray, test: np.ndarray) -> Partition:
        """The partition after the move (new arrays)."""
        if not self.swap:
            return np.delete(train, self.train_out), np.delete(test, self.test_out)
        new_train, new_test = train.copy(), test.copy()
        new_train[self.train_out], new_test[self.test_out] = test[self.test_out], train[self.train_out]
        return new_train, new_test


def centroid_scores(train_means: np.ndarray, test_means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ooDML's swap-ranking scores of each class by its distance to the two side centroids.

    Args:
        train_means, test_means: (n_train, d) and (n_test, d) class means of the two sides.

    Returns:
        ``(score_train (n_train,), score_test (n_test,))`` with
        ``score_train = ||x - m_test|| - ||x - m_train||`` and
        ``score_test = ||x - m_train|| - ||x - m_test||``: small for a class that
        sits nearer the other side's centroid than its own.
    """
    m_train, m_test = train_means.mean(0), test_means.mean(0)
    score_train = np.linalg.norm(train_means - m_test, axis=1) - np.linalg.norm(train_means - m_train, axis=1)
    score_test = np.linalg.norm(test_means - m_train, axis=1) - np.linalg.norm(test_means - m_test, axis=1)
    return score_train, score_test


def centroid_screen(means: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ooDML heuristic as separable swap gain estimates.

    Returns ``(train_gain (n_train,), test_gain (n_test,))``: the estimated gain
    of swapping train position p with test position q is
    ``train_gain[p] + test_gain[q]``, larger meaning the swap should increase
    the shift more (it moves a train class that sits near the test centroid to
    the test side, and a test class near the train centroid to the train side).
    """
    score_train, score_test = centroid_scores(means[train], means[test])
    return -score_train, -score_test


class Scorer:
    """What the split search needs of a distance (subclasses implement :meth:`distances`).

    Attributes:
        means: (C, d) class means, for the centroid screen.
        exhaustive_limit: the most balanced splits the search may score exhaustively
            with this scorer (:func:`oodml.splits.search.exhaustive_levels`); above it,
            it searches greedily.  A class attribute, so the choice never depends on
            the machine's speed.
    """

    means: np.ndarray
    exhaustive_limit: int = 500
    #: relative error bound of :meth:`move_distances` (0: exact up to rounding); the search needs a move to
    #: gain more than this before it counts as an improvement.
    rounding: float = 0.0

    def distances(self, partitions: Sequence[Partition]) -> np.ndarray:
        """Exact distances of several partitions, (len(partitions),)."""
        raise NotImplementedError

    def distance(self, train: np.ndarray, test: np.ndarray) -> float:
        return float(self.distances([(train, test)])[0])

    def move_distances(self, train: np.ndarray, test: np.ndarray, moves: Sequence[Move]) -> np.ndarray:
        """Exact distances of the partitions that ``moves`` make from ``(train, test)``."""
        return self.distances([move.apply(train, test) for move in moves])

    def stacked_distances(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        """Exact distances of many same-sized partitions: row ``i`` of ``train`` (P, n1) and ``test`` (P, n2).

        Returns (P,) float64.
        """
        return self.distances(list(zip(train, test, strict=True)))

    def path_distances(self, partitions: Sequence[Partition]) -> np.ndarray:
        """Distances of partitions of distinct classes near one another (a search path), (len(partitions),).

        Exact as :meth:`distances` here; a scorer may score them as updates of one
        another, within :attr:`rounding`.
        """
        return self.distances(partitions)

    def screen(self, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Separable swap gain estimates, as :func:`centroid_screen`."""
        return centroid_screen(self.means, train, test)


@dataclass(frozen=True)
class _Side:
    """One side of a partition in the moment form: class count, sum (d,) and second moment X^T X (d, d)."""

    n: int
    total: np.ndarray
    moment: np.ndarray

    @classmethod
    def of(cls, rows: np.ndarray) -> _Side:
        return cls(len(rows), rows.sum(0), rows.T @ rows)

    def plus(self, rows: np.ndarray) -> _Side:
        return _Side(self.n + len(rows), self.total + rows.sum(0), self.moment + rows.T @ rows)

    def minus(self, rows: np.ndarray) -> _Side:
        return _Side(self.n - len(rows), self.total - rows.sum(0), self.moment - rows.T @ rows)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.n
        return mean, (self.moment - np.outer(self.total, mean)) / (self.n - 1)


def _fid_of_sides(a: _Side, b: _Side) -> float:
    (mu1, cov1), (mu2, cov2) = a.mean_cov(), b.mean_cov()
    diff = mu1 - mu2
    return frechet_from_terms(diff @ diff, np.trace(cov1), np.trace(cov2), trace_sqrt_of_product(cov1, cov2))


class MeanFID(Scorer):
    """Exact class-mean Fréchet distance of any partition, in the cheaper of two exact forms.

    Args:
        means: (C, d) class means.

    Gram form (a side has at most ``d`` classes): with ``G = X X^T`` (X the
    globally centred means, which leaves the distance unchanged), the mean
    term, both covariance traces and the cross term
    ``||H G[T, S] H||_* / sqrt((n1-1)(n2-1))`` (H: centring) need only ``G``.
    Moment form (both sides have more than ``d`` classes): each side's count,
    sum and ``X^T X``; a move subtracts and adds the rows that change sides.
    """

    #: scored fully vectorised, 100,000 partitions of 10 vs 10 classes take about a second
    exhaustive_limit = 100_000

    def __init__(self, means: np.ndarray, lowrank: bool | None = None):
        x = np.asarray(means, dtype=np.float64)
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x).all(1))[0])
            raise OodmlError(f"class means contain NaN or inf (first at class index {bad}); every class needs at "
                             f"least one image with finite features")
        self.means = x - x.mean(0)
        self.lowrank = x.shape[1] >= LOWRANK_MIN_DIM if lowrank is None else bool(lowrank)
        self.rounding = 1e-7 if self.lowrank else 0.0
        # Woodbury's r x r solves per node must stay cheaper than a d x d eigenproblem.
        self.rebase_after = min(REBASE_AFTER, max(8, x.shape[1] // 8))
        self._spectrum: _Spectrum | None = None

    @cached_property
    def gram(self) -> np.ndarray:
        return self.means @ self.means.T

    def _gram_form(self, n1: int, n2: int) -> bool:
        return min(n1, n2) <= self.means.shape[1]

    def _terms(self, train: np.ndarray, test: np.ndarray) -> tuple[float, float, float, np.ndarray]:
        """The mean term, ``tr S1``, ``tr S2`` and the doubly centred (n1, n2) block whose nuclear norm,
        over ``sqrt((n1-1)(n2-1))``, is the trace term."""
        g = self.gram
        n1, n2 = len(train), len(test)
        g_tt, g_ss, g_ts = g[np.ix_(train, train)], g[np.ix_(test, test)], g[np.ix_(train, test)]
        mean_term = g_tt.sum() / n1**2 + g_ss.sum() / n2**2 - 2 * g_ts.sum() / (n1 * n2)
        diag = np.diagonal(g)
        tr1 = (diag[train].sum() - g_tt.sum() / n1) / (n1 - 1)
        tr2 = (diag[test].sum() - g_ss.sum() / n2) / (n2 - 1)
        centred = g_ts - g_ts.mean(0, keepdims=True) - g_ts.mean(1, keepdims=True) + g_ts.mean()
        return mean_term, tr1, tr2, centred

    def distances(self, partitions: Sequence[Partition]) -> np.ndarray:
        """Exact distances of several partitions; same-shaped Gram-form ones share one batched SVD."""
        out = np.empty(len(partitions))
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, (tr, te) in enumerate(partitions):
            by_shape.setdefault((len(tr), len(te)), []).append(i)
        for (n1, n2), idx in by_shape.items():
            if not self._gram_form(n1, n2):
                x = self.means
                out[idx] = [_fid_of_sides(_Side.of(x[partitions[i][0]]), _Side.of(x[partitions[i][1]])) for i in idx]
                continue
            mean_term, tr1, tr2, centred = zip(*(self._terms(*partitions[i]) for i in idx), strict=True)
            sv = np.linalg.svd(np.stack(centred), compute_uv=False).sum(1)
            out[idx] = frechet_from_terms(np.array(mean_term), np.array(tr1), np.array(tr2),
                                          sv / np.sqrt((n1 - 1) * (n2 - 1)))
        return out

    def stacked_distances(self, train: np.ndarray, test: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """As :meth:`Scorer.stacked_distances`, vectorised over partitions, always in the Gram form.

        The Gram form is exact at any side size, and for the small sides this is
        meant for (the exhaustive search: at most 10 classes each) it is the
        cheaper one whatever the feature width.  Gathers the (P, n1, n1),
        (P, n2, n2) and (P, n1, n2) blocks of the Gram matrix ``chunk``
        partitions at a time (about ``chunk * (n1 + n2)^2 * 8`` bytes) and takes
        one batched SVD per chunk: 4-5x faster than scoring them one by one,
        with the same values.
        """
        train, test = np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
        (count, n1), n2 = train.shape, test.shape[1]
        g, diag = self.gram, np.diagonal(self.gram)
        out = np.empty(count)
        for lo in range(0, count, chunk):
            tr, te = train[lo:lo + chunk], test[lo:lo + chunk]
            sum_tt = g[tr[:, :, None], tr[:, None, :]].sum((1, 2))
            sum_ss = g[te[:, :, None], te[:, None, :]].sum((1, 2))
            g_ts = g[tr[:, :, None], te[:, None, :]]
            mean_term = sum_tt / n1**2 + sum_ss / n2**2 - 2 * g_ts.sum((1, 2)) / (n1 * n2)
            traces = (diag[tr].sum(1) - sum_tt / n1) / (n1 - 1) + (diag[te].sum(1) - sum_ss / n2) / (n2 - 1)
            centred = (g_ts - g_ts.mean(1, keepdims=True) - g_ts.mean(2, keepdims=True)
                       + g_ts.mean((1, 2), keepdims=True))
            sv = np.linalg.svd(centred, compute_uv=False).sum(1)
            # tr S1 + tr S2 as one term (trace2 0): summed first, as this path always has, so the exhaustive
            # search's values, and its choice among tied splits, stay bit for bit what they were
            out[lo:lo + chunk] = frechet_from_terms(mean_term, traces, 0.0, sv / np.sqrt((n1 - 1) * (n2 - 1)))
        return out

    def move_distances(self, train: np.ndarray, test: np.ndarray, moves: Sequence[Move]) -> np.ndarray:
        """As :meth:`Scorer.move_distances`; in the moment form each move costs a low-rank update, not a rebuild.

        With :attr:`lowrank` (feature width from :data:`LOWRANK_MIN_DIM`), not even the
        d x d eigenvalue problem is redone per move: see :class:`_Spectrum`.
        """
        if any(self._gram_form(*move.sizes(len(train), len(test))) for move in moves):
            return super().move_distances(train, test, moves)
        if self.lowrank:
            values = self._near_distances([move.apply(train, test) for move in moves], (train, test))
            if values is not None:
                return values
        x = self.means
        side_train, side_test = _Side.of(x[train]), _Side.of(x[test])
        out = np.empty(len(moves))
        for i, move in enumerate(moves):
            leaving_train, leaving_test = x[train[move.train_out]], x[test[move.test_out]]
            a, b = side_train.minus(leaving_train), side_test.minus(leaving_test)
            if move.swap:
                a, b = a.plus(leaving_test), b.plus(leaving_train)
            out[i] = _fid_of_sides(a, b)
        return out

    def path_distances(self, partitions: Sequence[Partition]) -> np.ndarray:
        """As :meth:`Scorer.path_distances`; with :attr:`lowrank`, moment-form partitions through :class:`_Spectrum`."""
        if not self.lowrank or any(self._gram_form(len(tr), len(te)) for tr, te in partitions):
            return self.distances(partitions)
        values = [self._near_distances([part], part) for part in partitions]
        return np.array([self.distance(*part) if v is None else v[0] for part, v in zip(partitions, values,
                                                                                         strict=True)])

    def _near_distances(self, partitions: Sequence[Partition], origin: Partition) -> np.ndarray | None:
        """Moment-form distances of ``partitions`` near ``origin`` through the nearest :class:`_Spectrum`.

        Rebases at ``origin`` once it has moved more than :data:`REBASE_AFTER`
        classes from the base.  Returns None where no base can be made (scatter
        matrices not well-conditioned positive definite), and turns
        :attr:`lowrank` off: the caller scores exactly.  A partition whose update rounding made unscorable (a
        non-positive determinant) is scored exactly here.
        """
        out = None
        for _ in range(2):
            spectrum = self._spectrum
            if spectrum is None or spectrum.changed(*origin) > self.rebase_after or out is not None:
                try:
                    spectrum = self._spectrum = _Spectrum(self.means, self.sq_norms, *origin, previous=spectrum)
                except np.linalg.LinAlgError:   # rank-deficient features: exact from here on, not retried
                    self.lowrank, self.rounding, self._spectrum = False, 0.0, None
                    return None
            out = spectrum.distances_from(origin, partitions)
            if out is not None:
                break
            out = np.full(len(partitions), np.nan)     # the origin's own update failed: rebase there, once
        if out is None:
            return None
        bad = np.flatnonzero(np.isnan(out))
        if len(bad):
            out[bad] = self.distances([partitions[i] for i in bad])
        return out

    @cached_property
    def sq_norms(self) -> np.ndarray:
        """(C,) squared norms of the centred class means."""
        return np.einsum("ij,ij->i", self.means, self.means)

    def screen(self, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`Scorer.screen`; in the moment form from two matrix-vector products instead of two copies
        of each side.

        ``||x - m||^2 = ||x||^2 - 2 x.m + ||m||^2`` with the class means' squared norms kept
        (:attr:`sq_norms`): at SOP scale (5,659 classes a side, 2,048-d) 30x less time than the four
        (n, d) differences, with the same values up to rounding (about 1e-13 of a class's distance to the
        centroids).  The Gram form, and so every published split set, keeps :func:`centroid_screen`'s
        arithmetic.
        """
        if self._gram_form(len(train), len(test)):
            return super().screen(train, test)
        weights = np.zeros((2, len(self.means)))
        weights[0, train], weights[1, test] = 1 / len(train), 1 / len(test)
        centroids = weights @ self.means                                   # (2, d): m_train, m_test
        dots = self.means @ centroids.T                                    # (C, 2)
        sq = self.sq_norms[:, None] - 2 * dots + np.einsum("kd,kd->k", centroids, centroids)[None]
        dist = np.sqrt(np.maximum(sq, 0.0))                                # (C, 2): to m_train, to m_test
        return dist[train, 0] - dist[train, 1], dist[test, 1] - dist[test, 0]


class GenericScorer(Scorer):
    """Any distance and mode, by direct evaluation; swaps screened by the centroid heuristic.

    One partition costs a full :func:`oodml.shift.split_distance` call: about
    0.3 ms for ``w2`` on 10 class means, 0.1 s for ``sinkhorn``, 2 s for ``fid``
    in ``samples`` mode at 768 dimensions; hence the small ``exhaustive_limit``
    (500: every balanced split of up to 13 classes).
    """

    exhaustive_limit = 500

    def __init__(self, cf: ClassFeatures, distance: str, mode: str):
        self.cf, self.distance_name, self.mode = cf, distance, mode
        self.means = cf.means

    def distances(self, partitions: Sequence[Partition]) -> np.ndarray:
        return np.array([split_distance(self.cf, tr, te, distance=self.distance_name, mode=self.mode)
                         for tr, te in partitions])


# --- many classes, wide features: moves scored as low-rank updates of one eigendecomposition -------------

#: Feature width from which :class:`MeanFID` scores moves in the moment form through :class:`_Spectrum`
#: (below it one candidate's d x d eigenvalue problem is cheap, and the exact path is kept).
LOWRANK_MIN_DIM = 512

#: Rebase :class:`_Spectrum` once the partition scored from has this many classes added to or removed from
#: the base's sides (each adds a column to the origin's update, whose cost every candidate shares); at most
#: ``d / 8`` of them (``MeanFID.rebase_after``).
REBASE_AFTER = 256


def _scatter(rows: np.ndarray) -> np.ndarray:
    """Centred scatter matrix ``sum (x - m)(x - m)^T`` of (n, d) rows, (d, d)."""
    total = rows.sum(0)
    return rows.T @ rows - np.outer(total, total) / len(rows)


def _decompose(k1: np.ndarray, k2: np.ndarray, device: str | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(L, lam, V)``: ``k1 = L L^T`` (Cholesky) and ``L^T k2 L = V diag(lam) V^T`` (ascending ``lam``).

    ``k1 k2 = L V diag(lam) V^T L^{-1}``, so ``lam`` are the eigenvalues of ``k1 k2``.  With ``device`` (a
    torch device name: :class:`_Spectrum` passes ``"cuda"`` when a GPU is there) in torch float64 on it, else
    numpy.  Raises ``np.linalg.LinAlgError`` when ``k1`` or ``k2`` is not positive definite, or ``lam`` spans
    more than 1e10 (rank-deficient features: the exact path then scores them).
    """
    if device is not None:
        import torch

        a, b = torch.from_numpy(k1).to(device), torch.from_numpy(k2).to(device)
        factor, info = torch.linalg.cholesky_ex(a)
        if int(info):
            raise np.linalg.LinAlgError("scatter matrix is not positive definite")
        m = factor.T @ b @ factor
        lam, vec = torch.linalg.eigh((m + m.T) / 2)
        factor, lam, vec = factor.cpu().numpy(), lam.cpu().numpy(), vec.cpu().numpy()
    else:
        factor = np.linalg.cholesky(k1)
        trmm = scipy.linalg.blas.dtrmm   # triangular products: half the work of general ones
        m = trmm(1.0, factor, trmm(1.0, factor, k2, side=1, lower=1), side=0, lower=1, trans_a=1)
        lam, vec = np.linalg.eigh((m + m.T) / 2)
    if lam[0] <= lam[-1] * 1e-10:   # (numerically) singular: the quadrature would lose its accuracy
        raise np.linalg.LinAlgError("scatter matrices are not well-conditioned positive definite")
    return factor, lam, vec


def _cuda() -> str | None:
    """``"cuda"`` when torch sees a GPU, else None (the CPU path, numpy)."""
    try:
        import torch
    except ImportError:   # pragma: no cover - torch is a dependency
        return None
    return "cuda" if torch.cuda.is_available() else None


def _side_update(x: np.ndarray, added: np.ndarray, removed: np.ndarray, base_sum: np.ndarray, base_n: int
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """A side's scatter change as ``U C U^T``: ``(columns (k,) class indices, C (k+1, k+1), new n)``.

    The new scatter minus the base's is ``sum_added x x^T - sum_removed x x^T - s' s'^T / n' + s s^T / n``
    with ``s' = s + delta``, ``delta = sum_added x - sum_removed x``; in the columns
    ``[x_added, x_removed, s]`` that is ``C = [[diag(e) - e e^T / n', -e / n'], [-e^T / n', 1/n - 1/n']]``
    (``e`` = +1 for added, -1 for removed), with no cancellation between the two large mean terms.
    """
    cols = np.concatenate([added, removed])
    e = np.r_[np.ones(len(added)), -np.ones(len(removed))]
    n_new = base_n + len(added) - len(removed)
    c = np.empty((len(cols) + 1, len(cols) + 1))
    c[:-1, :-1] = np.diag(e) - np.outer(e, e) / n_new
    c[:-1, -1] = c[-1, :-1] = -e / n_new
    c[-1, -1] = 1 / base_n - 1 / n_new
    return cols, c, n_new


class _Spectrum:
    """One partition's pair of side scatters, decomposed so that nearby partitions are scored cheaply.

    With ``K1, K2`` the base's train and test scatter matrices (d, d), ``A = K1 K2``
    has eigenvalues ``lam`` (:func:`_decompose`), and the class-mean FID's cross
    term is ``tr (K1 K2)^(1/2) / sqrt((n1-1)(n2-1))``.  A partition near the base
    changes each side's scatter by ``E_i = U_i C_i U_i^T`` (:func:`_side_update`),
    so ``A' = A + P Q^T`` with ``P = [U1, K1 U2]`` and ``Q = [K2' U1 C1, U2 C2]``,
    and ``det(sI + A') / det(sI + A) = det(I + Q^T (sI + A)^-1 P)``: an r x r
    determinant (r = the columns of both updates) in the eigenbasis of ``A``.  Since
    ``(1/pi) int_0^inf log((t^2 + a) / (t^2 + b)) dt = sqrt(a) - sqrt(b)``,

        tr A'^(1/2) - tr A^(1/2) = (1/pi) int_0^inf log det(I + Q^T (t^2 I + A)^-1 P) dt,

    evaluated by the trapezoidal rule in ``log t`` (error about ``exp(-pi^2 / h)``
    relative, the integrand being analytic in a strip of half-width pi/2), over
    the base's spectrum widened by ``exp(8)`` in ``t`` each way, with the two tails
    in closed form to first order.  A candidate then costs ``nodes * d * r^2``
    instead of a d x d eigenvalue problem.
    """

    step = 0.4      # trapezoid step in log t: error ~ exp(-pi^2 / 0.4) = 2e-11 of the update's own size
    margin = 8.0    # the nodes reach exp(8) beyond sqrt(lam_min) and sqrt(lam_max)

    def __init__(self, means: np.ndarray, sq_norms: np.ndarray, train: np.ndarray, test: np.ndarray,
                 previous: _Spectrum | None = None):
        x = means
        self.means, self.sq_norms = x, sq_norms
        # The scatters: updated from the previous base's (d^2 per changed class) rather than rebuilt (n d^2).
        self.scatters = (previous.scatters_of(train, test) if previous is not None
                         else (_scatter(x[train]), _scatter(x[test])))
        self.sides = (frozenset(train.tolist()), frozenset(test.tolist()))
        self.n = (len(train), len(test))
        self.sums = (x[train].sum(0), x[test].sum(0))
        self.sumsq = (float(sq_norms[train].sum()), float(sq_norms[test].sum()))
        self.factor, self.lam, self.vec = _decompose(*self.scatters, _cuda())
        self.trace_sqrt = float(np.sqrt(self.lam).sum())
        lo, hi = 0.5 * np.log(self.lam[0]) - self.margin, 0.5 * np.log(self.lam[-1]) + self.margin
        u = lo + self.step * (np.arange(int(np.ceil((hi - lo) / self.step))) + 0.5)
        self.t = np.exp(u)
        self.t_lo, self.t_hi = np.exp(lo), np.exp(lo + self.step * len(u))
        s = np.r_[0.0, self.t**2]
        self.resolvent = 1.0 / (s[:, None] + self.lam[None, :])      # (1 + nodes, d): node 0 is s = 0
        self.p_sums = self._p(np.stack(self.sums, 1))
        self.q_sums = self._q(np.stack(self.sums, 1))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._last_origin: tuple[tuple[bytes, bytes], tuple | None] | None = None

    def _p(self, u: np.ndarray) -> np.ndarray:
        """``V^T L^-1 u`` for (d, k) columns ``u``."""
        return self.vec.T @ scipy.linalg.solve_triangular(self.factor, u, lower=True, check_finite=False)

    def _q(self, u: np.ndarray) -> np.ndarray:
        """``V^T L^T u`` for (d, k) columns ``u``."""
        return self.vec.T @ (self.factor.T @ u)

    def _transforms(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p, q)``, each (d, k): :meth:`_p` and :meth:`_q` of the class means ``classes``, cached."""
        todo = [int(c) for c in dict.fromkeys(classes.tolist()) if int(c) not in self._cache]
        if todo:
            cols = self.means[todo].T
            for c, p, q in zip(todo, self._p(cols).T, self._q(cols).T, strict=True):
                self._cache[c] = (p, q)
        if not len(classes):
            return np.zeros((len(self.lam), 0)), np.zeros((len(self.lam), 0))
        pairs = [self._cache[int(c)] for c in classes]
        return np.stack([p for p, _ in pairs], 1), np.stack([q for _, q in pairs], 1)

    def _updates(self, train: np.ndarray, test: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """Per side, ``(added, removed, columns, C, new n)`` of ``(train, test)`` against the base
        (:func:`_side_update`; the columns are class indices, then the base's side sum)."""
        out = []
        for side, classes in enumerate((train, test)):
            now = frozenset(classes.tolist())
            added = np.array(sorted(now - self.sides[side]), dtype=np.int64)
            removed = np.array(sorted(self.sides[side] - now), dtype=np.int64)
            out.append((added, removed, *_side_update(self.means, added, removed, self.sums[side], self.n[side])))
        return out

    def scatters_of(self, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The two side scatters of ``(train, test)``: the base's plus each side's ``U C U^T``."""
        out = []
        for side, (_, _, cols, c, _) in enumerate(self._updates(train, test)):
            u = np.concatenate([self.means[cols].T, self.sums[side][:, None]], 1)
            out.append(self.scatters[side] + u @ c @ u.T)
        return out[0], out[1]

    def changed(self, train: np.ndarray, test: np.ndarray) -> int:
        """How many classes ``(train, test)`` adds to or removes from the base's sides."""
        now = (frozenset(train.tolist()), frozenset(test.tolist()))
        return sum(len(a ^ b) for a, b in zip(now, self.sides, strict=True))

    def distance(self, train: np.ndarray, test: np.ndarray) -> float:
        """Class-mean FID of a partition of distinct classes, through the update from the base.

        Returns NaN when the update's determinant is not positive at some node
        (rounding in a nearly singular update), so that the caller scores that
        partition exactly instead.
        """
        updates = self._updates(train, test)
        p_tilde, q_tilde, _ = self._columns(updates)
        return self._fid(updates, self.trace_sqrt + self._trace_sqrt_change(p_tilde, q_tilde))

    def _columns(self, updates: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray, tuple]:
        """``(V^T L^-1 P, V^T L^T Q, (U1, C1, p(U1), U2, C2, q(U2)))`` of an update from the base (d x r each)."""
        (_, _, cols1, c1, _), (_, _, cols2, c2, _) = updates
        x = self.means
        p1, _ = self._transforms(cols1)
        _, q2 = self._transforms(cols2)
        p_u1 = np.concatenate([p1, self.p_sums[:, :1]], 1)                # p(U1), U1 = [x.., s1]
        q_u2 = np.concatenate([q2, self.q_sums[:, 1:]], 1)                # q(U2), U2 = [x.., s2]
        u1 = np.concatenate([x[cols1].T, self.sums[0][:, None]], 1)
        u2 = np.concatenate([x[cols2].T, self.sums[1][:, None]], 1)
        p_tilde = np.concatenate([p_u1, q_u2], 1)
        q_tilde = np.concatenate([self.lam[:, None] * p_u1 @ c1 + q_u2 @ (c2 @ (u2.T @ u1) @ c1), q_u2 @ c2], 1)
        return p_tilde, q_tilde, (u1, c1, p_u1, u2, c2, q_u2)

    def _fid(self, updates: list[tuple[np.ndarray, ...]], trace_sqrt: float) -> float:
        """The class-mean FID of the partition ``updates`` makes, given its ``tr (K1 K2)^(1/2)``."""
        (add1, rem1, _, _, n1), (add2, rem2, _, _, n2) = updates
        x, sq = self.means, self.sq_norms
        s1 = self.sums[0] + x[add1].sum(0) - x[rem1].sum(0)
        s2 = self.sums[1] + x[add2].sum(0) - x[rem2].sum(0)
        tr1 = self.sumsq[0] + sq[add1].sum() - sq[rem1].sum() - s1 @ s1 / n1
        tr2 = self.sumsq[1] + sq[add2].sum() - sq[rem2].sum() - s2 @ s2 / n2
        diff = s1 / n1 - s2 / n2
        cross = trace_sqrt / np.sqrt((n1 - 1) * (n2 - 1))
        return frechet_from_terms(diff @ diff, tr1 / (n1 - 1), tr2 / (n2 - 1), cross)

    def distances_from(self, origin: Partition, partitions: Sequence[Partition]) -> np.ndarray | None:
        """Class-mean FIDs of ``partitions`` near ``origin``, itself near the base; None if rounding defeats it.

        Two levels, so that a base serves many steps: ``origin`` is the base
        plus ``Pa Qa^T`` (``ra`` columns), whose resolvent follows from the base's by
        Woodbury, ``(s + A + Pa Qa^T)^-1 = R - R Pa (I + Qa^T R Pa)^-1 Qa^T R``;
        each partition is then an update ``Pc Qc^T`` of ``origin`` and costs
        ``nodes * d * rc * (rc + 2 ra)`` rather than ``nodes * d * (ra + rc)^2``.
        NaN marks a partition whose determinant came out non-positive.
        """
        at = self._origin(origin)
        if at is None:
            return None
        p_a, q_a, (u1a, c1a, p_u1a, u2a, c2a, q_u2a), k_a, at_origin, (n1, n2), sums, p_s1, q_s2, sides = at
        x = self.means
        p_c, q_c, sizes = [], [], []
        for train, test in partitions:
            (cols1, c1, _), (cols2, c2, _) = [
                _side_update(x, np.array(sorted(frozenset(cl.tolist()) - now), dtype=np.int64),
                             np.array(sorted(now - frozenset(cl.tolist())), dtype=np.int64), total, n)
                for cl, now, total, n in ((train, sides[0], sums[0], n1), (test, sides[1], sums[1], n2))]
            p1, _ = self._transforms(cols1)
            _, q2 = self._transforms(cols2)
            uc1 = np.concatenate([x[cols1].T, sums[0][:, None]], 1)
            uc2 = np.concatenate([x[cols2].T, sums[1][:, None]], 1)
            p_uc1, q_uc2 = np.concatenate([p1, p_s1], 1), np.concatenate([q2, q_s2], 1)
            # K1 at origin = K1 base + U1a C1a U1a^T;  K2 after the move = K2 base + U2a C2a U2a^T + Uc2 Cc2 Uc2^T.
            q_k2_u1 = (self.lam[:, None] * p_uc1 + q_u2a @ (c2a @ (u2a.T @ uc1))
                       + q_uc2 @ (c2 @ (uc2.T @ uc1)))
            p_c.append(np.concatenate([p_uc1, q_uc2 + p_u1a @ (c1a @ (u1a.T @ uc2))], 1))
            q_c.append(np.concatenate([q_k2_u1 @ c1, q_uc2 @ c2], 1))
            sizes.append(p_c[-1].shape[1])
        changes = self._woodbury_changes(p_a, q_a, k_a, np.concatenate(p_c, 1), np.concatenate(q_c, 1), sizes)
        return np.array([self._fid(self._updates(*part), at_origin + change)
                         for part, change in zip(partitions, changes, strict=True)])

    def _origin(self, origin: Partition) -> tuple | None:
        """What :meth:`distances_from` needs of ``origin`` whatever the partitions scored from it, or None when
        its own update's determinant is not positive.  Kept for the last origin: a removal step and the partial
        steps of a level scored from one origin twice cost one ``(nodes, ra, ra)`` product, not two."""
        key = (np.asarray(origin[0]).tobytes(), np.asarray(origin[1]).tobytes())
        if self._last_origin is not None and self._last_origin[0] == key:
            return self._last_origin[1]
        base_updates = self._updates(*origin)
        p_a, q_a, columns = self._columns(base_updates)
        k_a = np.eye(p_a.shape[1]) + _per_node(np.ascontiguousarray(q_a.T)[None] * self.resolvent[:, None, :], p_a)
        sign, logdet_a = np.linalg.slogdet(k_a)                           # k_a: (1 + nodes, ra, ra)
        if (sign <= 0).any():
            self._last_origin = (key, None)
            return None
        at_origin = self.trace_sqrt + self._integral(logdet_a, float(np.einsum("dr,dr->", q_a, p_a)))
        (_, _, _, _, n1), (_, _, _, _, n2) = base_updates
        x = self.means
        sums = [x[origin[0]].sum(0), x[origin[1]].sum(0)]
        p_s1, q_s2 = self._p(sums[0][:, None]), self._q(sums[1][:, None])
        sides = (frozenset(origin[0].tolist()), frozenset(origin[1].tolist()))
        at = (p_a, q_a, columns, k_a, at_origin, (n1, n2), sums, p_s1, q_s2, sides)
        self._last_origin = (key, at)
        return at

    def _woodbury_changes(self, p_a: np.ndarray, q_a: np.ndarray, k_a: np.ndarray, p_c: np.ndarray,
                          q_c: np.ndarray, sizes: list[int], chunk_bytes: int = 1 << 26) -> np.ndarray:
        """Each candidate's ``tr`` square-root change from the origin (NaN where rounding defeats it).

        ``p_c, q_c`` (d, sum(sizes)) hold the candidates' transformed columns side by side.
        """
        d, total = p_c.shape
        bounds = np.cumsum([0] + sizes)
        logdets = np.empty((len(sizes), len(self.resolvent)))
        signs = np.ones_like(logdets)
        step = max(1, chunk_bytes // (8 * d * max(total, p_a.shape[1])))
        qc_t, qa_t = np.ascontiguousarray(q_c.T), np.ascontiguousarray(q_a.T)
        for lo in range(0, len(self.resolvent), step):
            res = self.resolvent[lo:lo + step, None, :]
            scaled_c = qc_t[None] * res                                           # (nodes, total, d)
            cross_ca = _per_node(scaled_c, p_a)                                   # Qc^T R Pa
            solved = np.linalg.solve(k_a[lo:lo + step], _per_node(qa_t[None] * res, p_c))  # Ka^-1 Qa^T R Pc
            for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                g = scaled_c[:, a:b] @ p_c[:, a:b] - cross_ca[:, a:b] @ solved[:, :, a:b]
                signs[i, lo:lo + step], logdets[i, lo:lo + step] = np.linalg.slogdet(np.eye(b - a) + g)
        first = np.add.reduceat(np.einsum("dr,dr->r", q_c, p_c), bounds[:-1])
        out = np.array([self._integral(row, f) for row, f in zip(logdets, first, strict=True)])
        out[(signs <= 0).any(1)] = np.nan
        return out

    def _integral(self, logdets: np.ndarray, first_order: float) -> float:
        """``(1/pi) int_0^inf log det(...) dt`` from its values at s = 0 and the nodes, with both tails.

        The trapezoidal sum is continued over the nodes beyond both ends, where the
        integrand (in log t) is ``log det(s = 0) * t`` below and ``tr(Q^T P) / t``
        above, to first order: two geometric series.
        """
        tails = (logdets[0] * self.t_lo + first_order / self.t_hi) * self.step / (2 * np.sinh(self.step / 2))
        return (self.step * float(logdets[1:] @ self.t) + tails) / np.pi

    def _trace_sqrt_change(self, p_tilde: np.ndarray, q_tilde: np.ndarray, chunk_bytes: int = 1 << 25) -> float:
        """``tr (A + P Q^T)^(1/2) - tr A^(1/2)`` from ``V^T L^-1 P`` and ``V^T L^T Q`` (each (d, r)), or NaN."""
        d, r = p_tilde.shape
        logdets = np.empty(len(self.resolvent))
        step = max(1, chunk_bytes // (8 * d * r))
        eye = np.eye(r)
        for lo in range(0, len(self.resolvent), step):
            scaled = np.ascontiguousarray(q_tilde.T)[None] * self.resolvent[lo:lo + step, None, :]  # (nodes, r, d)
            g = (scaled.reshape(-1, d) @ p_tilde).reshape(-1, r, r)                # one matrix product
            sign, logdets[lo:lo + step] = np.linalg.slogdet(eye + g)
            if (sign <= 0).any():
                return float("nan")
        return self._integral(logdets, float(np.einsum("dr,dr->", q_tilde, p_tilde)))


def _per_node(stacked: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``stacked @ right`` for (nodes, m, d) and (d, k), as one (nodes * m, d) matrix product: (nodes, m, k).

    One large product instead of one per node (numpy's stacked matmul), with the same dot products.  At SOP
    scale on one BLAS thread it made no measurable difference (``tools/bench_splits.py --sop-search``: 981 s
    against 978 s end to end); it is meant for several threads, where one small product per node scales
    poorly (not measured end to end).
    """
    nodes, m, d = stacked.shape
    return (stacked.reshape(nodes * m, d) @ right).reshape(nodes, m, right.shape[1])


def make_scorer(cf: ClassFeatures, distance: str = "fid", mode: str = "class-mean") -> Scorer:
    """The fastest exact scorer for a distance and mode."""
    if distance == "fid" and mode == "class-mean":
        return MeanFID(cf.means)
    return GenericScorer(cf, distance, mode)
