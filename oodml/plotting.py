"""Figures: a headless matplotlib figure, saved atomically as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

from ._fs import atomic_path


def new_figure(width: float = 6.4, height: float = 4.0):
    """``(fig, ax)`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=120)


def save_figure(fig, out_prefix: str | Path) -> list[Path]:
    """Write ``<out_prefix>.png`` and ``<out_prefix>.svg`` (each atomically), close ``fig``, return the paths."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    written = []
    for ext in ("png", "svg"):
        dest = Path(f"{out_prefix}.{ext}")
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format=ext)
        written.append(dest)
    plt.close(fig)
    return written
