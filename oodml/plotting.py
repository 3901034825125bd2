"""Figures: the figure style of oodml's plots, the degradation curves of loaded runs, and saving a figure
atomically as PNG and SVG.

Figures are made without pyplot, so no backend is chosen and none is switched (a notebook keeps its own;
headless machines need no display), and nothing stays registered once a figure is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._fs import atomic_path
from .errors import OodmlError

if TYPE_CHECKING:
    from .results import Results


def new_figure(width: float = 6.4, height: float = 4.0):
    """``(fig, ax)``: a matplotlib ``Figure`` of ``width`` x ``height`` inches at 120 dpi, one axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    return fig, fig.add_subplot()


def save_figure(fig, out_prefix: str | Path) -> list[Path]:
    """Write ``<out_prefix>.png`` and ``<out_prefix>.svg`` (each atomically), return the paths."""
    fig.tight_layout()
    written = []
    for ext in ("png", "svg"):
        dest = Path(f"{out_prefix}.{ext}")
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format=ext)
        written.append(dest)
    return written


def curve_figure(loaded: Sequence[Results], metric: str = "recall@1", *, test_set: str = "auto"):
    """The degradation curves of ``metric`` of loaded runs, overlaid, with each level's distance interval as
    horizontal error bars (what :func:`oodml.plot.curves` draws once it has read the runs).

    Args:
        loaded: runs as :class:`~oodml.results.Results` (their ``meta``, ``levels``, ``rows``, ``zero_shot`` and
            ``matched_levels``).
        metric, test_set: as :func:`oodml.plot.curves`.

    Returns:
        A matplotlib ``Figure`` (one axes; x: distance, y: ``metric``).

    Raises:
        OodmlError: as :func:`oodml.plot.curves`.
    """
    if test_set not in ("auto", "matched", "full"):
        raise OodmlError(f"test_set {test_set!r}: choose auto, matched or full")
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
