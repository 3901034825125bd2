"""Draw the degradation curve shown on the README and the docs front page: docs/assets/degradation-curve.{svg,png}.

Every committed ``glyphs@v1`` leaderboard entry is verified (its Recall@1 per level recomputed from its
embeddings, as ``oodml leaderboard verify`` does), then drawn: one thin line per method and the mean over
methods in black, Recall@1 against the measured train-test distance of each level.  The figure therefore
shows the published baselines as the board scores them, nothing typed in by hand.

Run:  .venv/bin/python tools/render_docs_figure.py          (a few minutes on 2 cores: it re-scores 8 entries)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from oodml.leaderboard import iter_entries, verify_entries
from oodml.plotting import new_figure, save_figure

REPO = Path(__file__).resolve().parents[1]


def curves(board_root: Path, dataset: str, version: str) -> dict[str, list[tuple[float, float]]]:
    """Method name -> [(level distance, Recall@1)] for every verified entry of ``dataset@version``."""
    out = {}
    for v in verify_entries(iter_entries(board_root)):
        meta = v.submission.meta if v.submission else {}
        if v.ok and (meta["dataset"], meta["split_version"]) == (dataset, version):
            out[meta["method"]] = [(lv["distance"], lv["recall@1"]) for lv in v.scores.levels]
    return out


def draw(series: dict[str, list[tuple[float, float]]], out_prefix: Path, title: str) -> list[Path]:
    """Thin line per method, the mean over methods bold; writes ``out_prefix``.svg and .png."""
    import matplotlib

    matplotlib.rcParams["svg.fonttype"] = "none"      # text stays text: a small, crisp SVG
    matplotlib.rcParams["svg.hashsalt"] = "oodml"     # stable element ids, so a re-run changes no bytes
    fig, ax = new_figure(6.4, 3.4)
    for points in series.values():
        x, y = zip(*sorted(points), strict=True)
        ax.plot(x, y, color="#9ab", linewidth=0.9, alpha=0.8)
    distances = np.array([d for d, _ in sorted(next(iter(series.values())))])
    mean = np.mean([[r for _, r in sorted(points)] for points in series.values()], axis=0)
    ax.plot(distances, mean, color="black", linewidth=2.2, marker="o", markersize=4,
            label=f"mean of {len(series)} methods")
    ax.plot([], [], color="#9ab", linewidth=0.9, label="one method (seed 0)")
    ax.set_xlabel("train-test distance of the level (class-mean FID)")
    ax.set_ylabel("Recall@1 on the level's test classes")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return save_figure(fig, out_prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", type=Path, default=REPO / "leaderboard")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "assets" / "degradation-curve")
    args = parser.parse_args()
    series = curves(args.board, "glyphs", "v1")
    if not series:
        raise SystemExit(f"no verified glyphs@v1 entry under {args.board}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for path in draw(series, args.out, "glyphs@v1 baselines: retrieval degrades as the class shift grows"):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
