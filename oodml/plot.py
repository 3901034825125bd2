"""Degradation curves: a metric against the measured train-test distance of each level, one line per run.

:func:`curves` returns the matplotlib Figure (for a notebook); :func:`save_curves` writes it as PNG and SVG
(what ``oodml plot`` does).  The drawing of loaded runs (which :meth:`oodml.results.Results.save` uses too),
the figure style and the atomic saving are :mod:`oodml.plotting`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .plotting import curve_figure, save_figure
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
    loaded = [_as_results(run) for run in ([runs] if isinstance(runs, (Results, str, Path)) else runs)]
    return curve_figure(loaded, metric, test_set=test_set)


def save_curves(runs: Sequence[Results | str | Path], out_prefix: str | Path, *, metric: str = "recall@1",
                test_set: str = "auto") -> list[Path]:
    """:func:`curves` written to ``<out_prefix>.png`` and ``<out_prefix>.svg`` (each atomically); the paths."""
    return save_figure(curves(runs, metric, test_set=test_set), out_prefix)


def _as_results(run: Results | str | Path) -> Results:
    return run if isinstance(run, Results) else read_run(run)
