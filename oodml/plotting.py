"""Figures: the figure style of oodml's plots, and saving one atomically as PNG and SVG.

Figures are made without pyplot, so no backend is chosen and none is switched (a notebook keeps its own;
headless machines need no display), and nothing stays registered once a figure is dropped.
"""

from __future__ import annotations

from pathlib import Path

from ._fs import atomic_path


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
