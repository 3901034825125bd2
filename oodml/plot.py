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


def curves(runs: Sequence[Results | str | Path] | Results | str | Path, metric: str = "recall@1"):
    """The degradation curves of ``metric`` of one or several runs, overlaid, with each level's distance
    interval as horizontal error bars.

    Args:
        runs: :class:`~oodml.results.Results`, or folders (or ``results.parquet`` files) of saved runs.
        metric: a zero-shot metric of every run (``recall@1``, ``map@r``, ...).

    Returns:
        A matplotlib ``Figure`` (one axes; x: distance, y: ``metric``).

    Raises:
        OodmlError: a run lacks ``metric`` (naming the metrics it has), or a path holds no run.
    """
    loaded = [_as_results(run) for run in ([runs] if isinstance(runs, (Results, str, Path)) else runs)]
    if not loaded:
        raise OodmlError("give at least one run to plot")
    fig, ax = new_figure()
    for res in loaded:
        d, v = res.zero_shot(metric)
        if not len(d):
            raise OodmlError(f"{res.meta.get('model', 'a run')} has no zero-shot {metric!r}; available: "
                             f"{', '.join(sorted({r['metric'] for r in res.rows}))}")
        ci = {lv["distance"]: (lv["ci_low"], lv["ci_high"]) for lv in res.levels}
        xerr = np.array([[max(x - ci[x][0], 0) if not math.isnan(ci[x][0]) else 0 for x in d],
                         [max(ci[x][1] - x, 0) if not math.isnan(ci[x][1]) else 0 for x in d]])
        ax.errorbar(d, v, xerr=xerr, marker="o", capsize=2, label=res.meta.get("label") or res.meta.get("model"))
    first = loaded[0].meta
    ax.set_xlabel(f"train-test {first.get('distance', 'distance')} ({first.get('splits')})")
    ax.set_ylabel(metric)
    ax.set_title("degradation under class shift")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return fig


def save_curves(runs: Sequence[Results | str | Path], out_prefix: str | Path, *, metric: str = "recall@1"
                ) -> list[Path]:
    """:func:`curves` written to ``<out_prefix>.png`` and ``<out_prefix>.svg`` (each atomically); the paths."""
    return save_figure(curves(runs, metric), out_prefix)


def _as_results(run: Results | str | Path) -> Results:
    return run if isinstance(run, Results) else read_run(run)
