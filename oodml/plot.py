"""Degradation curves: a metric against the measured train-test distance of each level, one line per run.

:func:`curves` returns the matplotlib Figure (for a notebook); :func:`save_curves` writes it as PNG and SVG
(what ``oodml plot`` and :meth:`oodml.results.Results.save` do).  The figure style and the atomic saving
are :mod:`oodml.plotting`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import OodmlError
from .plotting import new_figure, save_figure
from .results import Results, read_run


def curves(runs: Sequence[Results | str | Path] | Results | str | Path, metric: str = "recall@1", *,
           test_set: str = "auto"):
    """The degradation curves of ``metric`` of one or several runs, overlaid, with each level's distance
    interval as horizontal error bars.

    Args:
        runs: :class:`~oodml.results.Results`, or folders (or ``results.parquet`` files) of saved runs.
        metric: a zero-shot metric of every run (``recall@1``, ``map@r``, ...).
        test_set: ``matched`` (the class-count-matched curve, :mod:`oodml.matched`), ``full`` (every level's
            full test set) or ``auto``: the matched curve as the headline (solid, with its 95% intervals) and the
            full-level curve dashed beside it, for runs and metrics that have one; the full curve alone for the
            others.

    Returns:
        A matplotlib ``Figure`` (one axes; x: distance, y: ``metric``).

    Raises:
        OodmlError: a run lacks ``metric`` (naming the metrics it has) or the matched curve asked for, or a
            path holds no run.
    """
    if test_set not in ("auto", "matched", "full"):
        raise OodmlError(f"test_set {test_set!r}: choose auto, matched or full")
    loaded = [_as_results(run) for run in ([runs] if isinstance(runs, (Results, str, Path)) else runs)]
    if not loaded:
        raise OodmlError("give at least one run to plot")
    fig, ax = new_figure()
    for color, res in enumerate(loaded):
        name = res.meta.get("label") or res.meta.get("model")
        matched = res.meta.get("matched") if test_set != "full" else None
        if test_set == "auto" and matched and not len(res.zero_shot(metric, "matched")[0]):
            matched = None  # a metric that is not scored on the draws (map@1000, nmi, ami): the full curve alone
        if test_set == "matched" and not matched:
            raise OodmlError(f"{name} has no class-count-matched scores (evaluated with --match-classes off, or "
                             "by an older oodml); plot test_set='full' or evaluate again")
        if matched:
            _draw(ax, res, metric, "matched", f"C{color}", f"{name} (N={matched['n_classes']} classes)")
        if test_set == "full" or (test_set == "auto" and not matched):
            _draw(ax, res, metric, "full", f"C{color}", name)
        elif test_set == "auto":
            _draw(ax, res, metric, "full", f"C{color}", f"{name} (all test classes)", dashed=True)
    first = loaded[0].meta
    ax.set_xlabel(f"train-test {first.get('distance', 'distance')} ({first.get('splits')})")
    ax.set_ylabel(metric)
    ax.set_title("degradation under class shift")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return fig


def _draw(ax, res: Results, metric: str, test_set: str, color: str, label: str, *, dashed: bool = False) -> None:
    """One run's curve: its levels' values of ``metric`` on ``test_set`` against their distances (with the
    distance intervals; on the matched curve also the value intervals)."""
    d, v = res.zero_shot(metric, test_set)
    if not len(d):
        have = sorted({r["metric"] for r in res.rows if r.get("test_set", "full") == test_set and r["shots"] == 0})
        where = " on the matched test sets" if test_set == "matched" else ""
        raise OodmlError(f"{res.meta.get('model', 'a run')} has no zero-shot {metric!r}{where}; available: "
                         f"{', '.join(have)}")
    ci = {lv["distance"]: (lv["ci_low"], lv["ci_high"]) for lv in res.levels}
    xerr = np.array([[max(x - ci[x][0], 0) if not math.isnan(ci[x][0]) else 0 for x in d],
                     [max(ci[x][1] - x, 0) if not math.isnan(ci[x][1]) else 0 for x in d]])
    yerr = None
    if test_set == "matched":
        bounds = np.array([(lo, hi) for _, _, lo, hi in res.matched_levels(metric)])
        if not np.isnan(bounds).any():
            yerr = np.array([np.maximum(v - bounds[:, 0], 0), np.maximum(bounds[:, 1] - v, 0)])
    ax.errorbar(d, v, xerr=xerr, yerr=yerr, marker="o" if not dashed else ".", capsize=2, color=color,
                linestyle="--" if dashed else "-", alpha=0.6 if dashed else 1.0, label=label)


def save_curves(runs: Sequence[Results | str | Path], out_prefix: str | Path, *, metric: str = "recall@1",
                test_set: str = "auto") -> list[Path]:
    """:func:`curves` written to ``<out_prefix>.png`` and ``<out_prefix>.svg`` (each atomically); the paths."""
    return save_figure(curves(runs, metric, test_set=test_set), out_prefix)


def _as_results(run: Results | str | Path) -> Results:
    return run if isinstance(run, Results) else read_run(run)
