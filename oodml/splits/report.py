"""Human-readable views of a split set: the level table and the distance plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..plotting import new_figure, save_figure
from .adjacent import METADATA_KEY, AdjacentPair, format_pairs, pairs_from_metadata
from .manifest import SplitSet


def _num(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _count(n: int) -> str:
    return "?" if n < 0 else str(n)


def search_line(metadata: dict) -> str | None:
    """How the levels were searched for, in one line (None for split sets not built by ``make-splits``)."""
    search = metadata.get("search") or {}
    if search.get("method") == "exhaustive":
        return (f"search: exhaustive, all {search['partitions']:,} balanced splits scored; the easiest and hardest "
                f"swap levels are the true extremes")
    return {"greedy": "search: greedy swaps from the default split (the extremes are the best found, not proven)",
            "oodml": "search: the ooDML swap procedure from the default split"}.get(metadata.get("algorithm"))


def searched_with(metadata: dict) -> str:
    """The search that ran: the recorded ``algorithm`` (split sets made since schema 3 record ``exhaustive``
    when ``--algorithm greedy`` could score every balanced split), or ``exhaustive`` when an older one records
    the option given, ``greedy``, with ``search.method: exhaustive``."""
    if (metadata.get("search") or {}).get("method") == "exhaustive":
        return "exhaustive"
    return metadata.get("algorithm", "?")


def recorded_adjacent(split_set: SplitSet) -> tuple[AdjacentPair, ...] | None:
    """The adjacent-level comparison ``metadata.json`` records (checked), or None when it records none."""
    if METADATA_KEY not in split_set.metadata:
        return None
    return pairs_from_metadata(split_set.metadata[METADATA_KEY], len(split_set.levels),
                               f"split set {split_set.path or split_set.dataset + '@' + split_set.version}")


def design_lines(metadata: dict) -> list[str]:
    """How the level count and the class counts were chosen, when not by the defaults (one line each)."""
    lines = []
    auto = metadata.get("levels_auto")
    if isinstance(auto, dict):
        tried = ", ".join(map(str, auto.get("tried") or [])) or "?"
        lines.append(f"levels: auto, the most (at most {auto.get('most', '?')}) whose adjacent levels are all "
                     f"distinct (level counts searched: {tried})")
    if metadata.get("keep_classes") is True:
        lines.append("class counts: kept (--keep-classes): swap levels only, every level the same number of "
                     "train and test classes")
    return lines


def adjacent_lines(split_set: SplitSet, adjacent: Sequence[AdjacentPair] | None = None, source: str = "") -> list[str]:
    """The adjacent-level lines of a report: ``adjacent`` when given (``source`` says where they come from),
    else those the split set records, else a line saying how to compute them."""
    pairs = adjacent if adjacent is not None else recorded_adjacent(split_set)
    if pairs:
        return format_pairs(pairs, source)
    parameters = split_set.metadata.get("parameters")
    if pairs is not None or (isinstance(parameters, dict) and parameters.get("bootstrap") == 0):
        return ["adjacent levels: not compared (no bootstrap draws)"]
    ref = split_set.path or f"{split_set.dataset}@{split_set.version}"
    return [f"adjacent levels: not recorded; `oodml splits show {ref} --adjacent` compares them on the data"]


def format_levels(split_set: SplitSet, adjacent: Sequence[AdjacentPair] | None = None, source: str = "") -> str:
    """A plain-text table: one row per level with distance, CI, kind, class and image counts; then each
    adjacent pair of levels compared (:func:`adjacent_lines`)."""
    meta = split_set.metadata
    head = [f"{split_set.dataset}@{split_set.version}  digest {split_set.digest[:16]}  "
            f"{meta.get('distance', '?')} on {meta.get('mode', '?')} {meta.get('extractor', '?')} features, "
            f"algorithm {searched_with(meta)}"]
    if search_line(meta):
        head.append(search_line(meta))
    if meta.get("default_distance") is not None:
        head.append(f"default (seeded random) split distance: {_num(meta['default_distance'], 4)}")
    head += design_lines(meta)
    rows = [("level", "distance", "95% CI", "kind", "train cls", "test cls", "val cls", "train img", "test img")]
    for lv in split_set.levels:
        rows.append((str(lv.index), _num(lv.distance, 4), f"{_num(lv.ci_low)}..{_num(lv.ci_high)}", lv.kind,
                     str(len(lv.train_classes)), str(len(lv.test_classes)), str(len(lv.val_classes)),
                     _count(lv.n_train_images), _count(lv.n_test_images)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(head + lines + adjacent_lines(split_set, adjacent, source))


def plot_levels(split_set: SplitSet, out_prefix: str | Path) -> list[Path]:
    """Plot distance per level with its CI (and the default split's distance) to ``<prefix>.png`` and ``.svg``."""
    levels = split_set.levels
    x = [lv.index for lv in levels]
    y = [lv.distance for lv in levels]
    err = [[max(lv.distance - lv.ci_low, 0) if not math.isnan(lv.ci_low) else 0 for lv in levels],
           [max(lv.ci_high - lv.distance, 0) if not math.isnan(lv.ci_high) else 0 for lv in levels]]
    fig, ax = new_figure(6, 3.6)
    colours = ["tab:blue" if lv.kind == "swap" else "tab:red" for lv in levels]
    ax.errorbar(x, y, yerr=err, fmt="none", ecolor="grey", capsize=3, zorder=1)
    ax.scatter(x, y, c=colours, zorder=2)
    ax.plot(x, y, color="tab:blue", alpha=0.4, zorder=0)
    default = split_set.metadata.get("default_distance")
    if default is not None:
        ax.axhline(default, ls="--", color="black", lw=1, label="default (random) split")
        ax.legend(loc="upper left", frameon=False)
    ax.set_xlabel("level (blue: class swaps, red: class removal)")
    ax.set_ylabel(f"train-test {split_set.metadata.get('distance', 'distance')}")
    ax.set_title(f"{split_set.dataset}@{split_set.version}")
    ax.set_xticks(x)
    return save_figure(fig, out_prefix)
