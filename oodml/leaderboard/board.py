"""The rendered board: ``leaderboard/README.md`` and ``leaderboard/index.html``, generated from verified entries.

One board per published split set and protocol.  Entries are ranked by their
mean Recall@1 over levels on the class-count-matched curve (:mod:`oodml.matched`:
every level scored on D seeded draws of N of its test classes, N the same at
every level, recomputed from the embeddings by the verifier); the full test
sets' mean Recall@1 is a column beside it.  Each entry's 95% interval and the
interval of its difference from the entry ranked above combine, as
:func:`oodml.matched.matched_interval` does for one run and :mod:`oodml.comparison`
for two, a paired bootstrap over test classes (:func:`oodml.matched.paired_matched_draws`:
one resample of each level's test classes applied to every draw of every entry)
and the draws' spread (:func:`oodml.stats.with_draw_spread`): when the gap's
interval holds 0 the two share a rank.  Unverified entries are never rendered, only
listed by name with their first problem.  Output is deterministic (no build
time, hand-written SVG), so CI can check that the committed board is the one
the committed entries produce.

Every submitted string is text, never markup: the HTML page escapes it
(attributes included) and shows only http(s) links; the Markdown page escapes
what Markdown or inline HTML would read (``<``, ``&``, backslash, backtick,
``*``, ``_``, ``~``, brackets and the table's ``|``) and folds it to one line.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._fs import atomic_path, remove_abandoned
from ..errors import OodmlError
from ..matched import DEFAULT_DRAWS, matched_count, paired_matched_draws
from ..splits import SplitSet, iter_published
from ..splits.overlap import PretrainingOverlap, pretraining_overlap
from ..stats import percentile_interval, with_draw_spread
from .submission import NO_PRETRAINING, SCHEMA_VERSION, declared_pretraining, is_web_url, one_line
from .verify import Verification, iter_entries, read_split_set_once, verify_entries

DRAWS = 2000
STEPS = """1. Evaluate your model with embeddings saved: `oodml evaluate MODEL --dataset D --splits V --fewshot 2,5 \
--save-embeddings --out results/my-method` (for the per-level protocol, MODEL is `runs/level{level}.pt`).
2. Package it: `oodml leaderboard submit results/my-method --name my-method --description "..." \
--authors "..." --code URL --training-data "..." --pretraining DATA` (`imagenet-1k`, a library tag, or `none`; a \
model spec declares it itself; add more results folders, one per seed, to record the spread).
3. Check it as CI will: `oodml leaderboard verify leaderboard/submissions/D/V/my-method`.
4. Render the board: `oodml leaderboard build`.
5. Open a pull request with the entry folder and the regenerated `leaderboard/README.md` and `index.html`."""


@dataclass
class Ranked:
    """One entry on a board: its verification, rank, matched mean Recall@1 with its interval, and the interval
    of its difference from the entry above."""

    verification: Verification
    rank: int
    mean: float
    ci: tuple[float, float]
    gap_ci: tuple[float, float] | None   # interval of (entry above - this entry)

    @property
    def meta(self) -> dict:
        return self.verification.submission.meta


def matching(v: Verification) -> tuple[int, int]:
    """``(N, D)`` of a verified entry's class-count-matched scores: entries are ranked together only on one."""
    return v.scores.matched.n_classes, v.scores.matched.draws


def rank_entries(verified: Sequence[Verification], draws: int = DRAWS, seed: int = 0) -> list[Ranked]:
    """Rank by mean matched Recall@1 over levels; an entry whose gap to the one above has a 95% interval
    holding 0 shares its rank.

    Raises:
        OodmlError: the entries are not matched alike (other N or D), so no one curve ranks them.
    """
    if not verified:
        return []
    if len({matching(v) for v in verified}) > 1:
        raise OodmlError("the entries are matched at different class counts or draws "
                         f"({', '.join(sorted({'{} x {}'.format(*matching(v)) for v in verified}))}); rank each alike")
    levels = sorted(lv["level"] for lv in verified[0].scores.levels)
    per_draw, boot = paired_matched_draws([v.scores.matched for v in verified], "recall@1", levels, draws,
                                          np.random.default_rng(seed))
    samples, draw_means = boot.mean(1), per_draw.mean(2)      # (entries, draws), (entries, D): means over levels
    means = [v.scores.curve("recall@1", "matched")["mean"] for v in verified]
    order = sorted(range(len(verified)), key=lambda i: (-means[i], verified[i].submission.meta["entry"]))
    ranked: list[Ranked] = []
    for pos, i in enumerate(order):
        ci = with_draw_spread(means[i], percentile_interval(samples[i]), draw_means[i])
        if pos == 0:
            ranked.append(Ranked(verified[i], 1, means[i], ci, None))
            continue
        above = order[pos - 1]
        gap = with_draw_spread(means[above] - means[i], percentile_interval(samples[above] - samples[i]),
                               draw_means[above] - draw_means[i])
        rank = ranked[-1].rank if gap[0] <= 0 else pos + 1
        ranked.append(Ranked(verified[i], rank, means[i], ci, gap))
    return ranked


def _fewshot_cells(ranked: Ranked) -> dict[str, tuple[float, float, str]]:
    """Per shot: (accuracy without adaptation, best adapted accuracy, its adaptation), means over levels."""
    out = {}
    for shots, by in ranked.verification.scores.fewshot.items():
        base = float(np.mean(list(by["none"].values())))
        adapted = {a: float(np.mean(list(v.values()))) for a, v in by.items() if a != "none"}
        if adapted:
            best = max(adapted, key=adapted.get)
            out[shots] = (base, adapted[best], best)
    return out


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def entry_overlap(meta: dict, split_set: SplitSet) -> PretrainingOverlap | None:
    """The overlap of the split set's test classes with the entry's declared pretraining data, or None when
    it declares none (``none``) or nothing (:func:`oodml.splits.overlap.pretraining_overlap`)."""
    declared = declared_pretraining(meta)
    if not declared or declared.lower() == NO_PRETRAINING:
        return None
    return pretraining_overlap(split_set, declared)


def overlap_cell(meta: dict, split_set: SplitSet) -> tuple[str, float | str]:
    """The board's "test classes seen in pretraining" cell: text and sort value (the mean share over levels).

    ``4-7 of 50 per level (class overlap with imagenet-1k)`` (``3/50, 5/48 by level`` when levels differ
    in size, ``all test classes`` when every one has a counterpart); ``at least ...`` when the declaration
    names data besides the class list; ``unknown (laion2b_s34b_b79k)`` when nothing can be counted;
    ``none (no pretraining)``; ``not declared``.
    """
    declared = declared_pretraining(meta)
    overlap = entry_overlap(meta, split_set)
    if overlap is None:
        return ("none (no pretraining)", 0.0) if declared else ("not declared", "not declared")
    if overlap.status == "unknown":
        return f"unknown ({declared})", "unknown"
    seen = [lv.test_classes_with_counterpart or 0 for lv in overlap.levels]
    totals = [lv.test_classes for lv in overlap.levels]
    bound = "at least " if overlap.status == "lower bound" else ""
    if seen == totals:
        counts, bound = "all test classes", ""
    elif len(set(totals)) == 1:
        counts = (f"{min(seen)}-{max(seen)}" if min(seen) != max(seen) else f"{seen[0]}") + f" of {totals[0]} per level"
    else:
        counts = ", ".join(f"{k}/{n}" for k, n in zip(seen, totals, strict=True)) + " by level"
    share = float(np.mean([k / n for k, n in zip(seen, totals, strict=True)]))
    return f"{bound}{counts} ({overlap.overlap} overlap with {overlap.class_list})", share


def overlap_details(meta: dict, split_set: SplitSet) -> str:
    """One line for the entry's details: the declaration, why the count is what it is, and per level the
    test classes with a counterpart."""
    declared = declared_pretraining(meta)
    overlap = entry_overlap(meta, split_set)
    if overlap is None:
        return f"pretraining: {declared or 'not declared'}"
    levels = "; ".join(f"L{lv.level} {lv.test_classes_with_counterpart}/{lv.test_classes}"
                       + (f" ({', '.join(lv.classes_with_counterpart)})" if lv.classes_with_counterpart else "")
                       for lv in overlap.levels) if overlap.status != "unknown" else "not countable"
    return f"pretraining: {declared} ({overlap.status}: {overlap.reason}); test classes seen: {levels}"


def _preprocessing_text(record: dict) -> str:
    """``resize 32 (shorter-side, bilinear), crop 32, mean 0.5/0.5/0.5, std 0.5/0.5/0.5``."""
    return (f"resize {record['resize'] or 'none'} ({record['resize_mode']}, {record['interpolation']}), crop "
            f"{record['crop'] or 'none'}, mean {'/'.join(map(str, record['mean']))}, std "
            f"{'/'.join(map(str, record['std']))}")


def card_details(meta: dict) -> str | None:
    """One line for the details of an entry carrying a (verified) protocol card: the metrics version, the
    split and retrieval facts and the preprocessing; None for an entry without one.  The board shows only
    verified entries, whose card is what :func:`oodml.protocol.card_problems` accepts; a card of any other
    shape (an entry rendered unchecked) is named malformed, never read further."""
    card = meta.get("protocol_card")
    if card is None:
        return None
    try:
        prep = card["preprocessing"]
        prep_text = ("; ".join(f"L{k} {_preprocessing_text(r)}" for k, r in prep["levels"].items())
                     if "levels" in prep else _preprocessing_text(prep))
        counts = ", ".join(f"L{k} {c['test']}" for k, c in card["classes"].items())
        matched = card.get("matched")
        matching = (f"also scored matched: {int(matched['n_classes'])} classes at every level, "
                    f"{int(matched['draws'])} draws" if matched else "not matched across levels")
        return (f"protocol card: metrics version {card['metrics_version']}; "
                f"{'class-disjoint' if card['class_disjoint'] else 'NOT class-disjoint'} train/test; gallery: "
                f"{card['gallery']}; query: {card['query_in_gallery']}; ties: {card['ties']}; preprocessing: "
                f"{prep_text}; test classes {counts}, {matching}")
    except (KeyError, TypeError, AttributeError, ValueError):  # ValueError: an integer too long to print
        return "protocol card: malformed (not verified)"


_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_~\[\]|])")


def markdown_text(text: str) -> str:
    """Submitted ``text`` as literal Markdown inline text, safe in a table cell.

    Folded to one line (a newline would end the table row); ``&``, ``<`` and
    ``>`` become HTML entities, so no tag (``<script>``, ``<img onerror>``)
    can start; backslash, backtick, ``*``, ``_``, ``~``, brackets and ``|`` are
    backslash-escaped, so no code span, emphasis, link (``[x](javascript:...)``)
    or cell boundary can start.  Renders as exactly the original characters.
    """
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", html.escape(one_line(text), quote=False))


def html_text(text: str) -> str:
    """Submitted ``text`` as HTML text or attribute value: folded to one line, ``&<>"'`` escaped."""
    return html.escape(one_line(text))


Cell = tuple[str, float | str]


def _board_rows(ranked: list[Ranked], text: Callable[[str], str],
                split_set: SplitSet) -> tuple[list[str], list[list[Cell]]]:
    """Header and rows of cells ``(text, sort value)`` shared by the Markdown and HTML renderings.

    ``text`` turns a submitted string into the rendering's safe text
    (:func:`markdown_text`; identity for HTML, which escapes every cell).
    """
    levels = [lv["level"] for lv in ranked[0].verification.scores.levels]
    n = matching(ranked[0].verification)[0]
    shots = sorted({s for r in ranked for s in _fewshot_cells(r)}, key=lambda s: int(s.split("-")[0]))
    header = ["rank", "method", f"mean R@1 N={n} [95% CI]", "gap to above [95% CI]", "full-set mean R@1",
              f"AUC R@1 N={n}", f"MAP@R N={n}", *[f"L{k} R@1 N={n}" for k in levels], *[f"{s} gain" for s in shots],
              "test classes seen in pretraining"]
    rows = []
    for r in ranked:
        scores = r.verification.scores
        rank = f"{r.rank}" + (" (tie)" if r.gap_ci is not None and r.gap_ci[0] <= 0 else "")
        gap = "" if r.gap_ci is None else f"[{r.gap_ci[0]:+.4f}, {r.gap_ci[1]:+.4f}]"
        full, auc, map_r = (scores.curve("recall@1")["mean"], scores.curve("recall@1", "matched")["auc"],
                            scores.curve("map@r", "matched")["mean"])
        cells = [(rank, r.rank), (text(r.meta["method"]) + (" (baseline)" if r.meta["baseline"] else ""),
                                  r.meta["method"]),
                 (f"{_fmt(r.mean)} [{_fmt(r.ci[0])}, {_fmt(r.ci[1])}]", r.mean),
                 (gap, r.gap_ci[0] if r.gap_ci else 0.0), (_fmt(full), full), (_fmt(auc), auc), (_fmt(map_r), map_r)]
        cells += [(_fmt(v), v) for v in scores.per_level("recall@1", "matched")]
        few = _fewshot_cells(r)
        for s in shots:
            if s in few:
                base, best, how = few[s]
                cells.append((f"{best - base:+.4f} ({how}: {_fmt(base)} -> {_fmt(best)})", best - base))
            else:
                cells.append(("-", float("-inf")))
        overlap, share = overlap_cell(r.meta, split_set)   # it quotes the submitted declaration
        cells.append((text(overlap), share))
        rows.append(cells)
    return header, rows


def _markdown_table(header: list[str], rows: list[list[tuple[str, object]]]) -> str:
    """A GFM table of cells already made safe (submitted text through :func:`markdown_text`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(text for text, _ in row) + " |" for row in rows]
    return "\n".join(lines)


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _curve_points(ranked: list[Ranked]) -> list[tuple[str, list[tuple[float, float]], list[tuple[float, float]]]]:
    """Per entry: its method, its matched and its full Recall@1 as (distance, value) points, by distance."""
    out = []
    for r in ranked:
        scores = r.verification.scores
        distance = [lv["distance"] for lv in scores.levels]
        out.append((r.meta["method"], sorted(zip(distance, scores.per_level("recall@1", "matched"), strict=True)),
                    sorted(zip(distance, scores.per_level("recall@1"), strict=True))))
    return out


def curves_svg(ranked: list[Ranked], width: int = 780, height: int = 380) -> str:
    """Recall@1 against level distance as a standalone SVG element: per entry its matched curve (solid, the
    headline) and its full test sets' curve (dashed, same colour)."""
    left, right, top, bottom = 56, 250, 16, 44
    series = _curve_points(ranked)
    xs = [x for _, pts, _ in series for x, _ in pts]
    ys = [y for _, matched, full in series for _, y in matched + full]
    x0, x1 = min(xs), max(xs)
    y0, y1 = max(0.0, np.floor(min(ys) * 20) / 20), min(1.0, np.ceil(max(ys) * 20) / 20)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 0.05)
    pw, ph = width - left - right, height - top - bottom
    n = matching(ranked[0].verification)[0]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="curves" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="Recall@1 against train-test distance: '
             f'{n} classes per level (solid), full test sets (dashed)">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>']
    for k in range(6):
        yv = y0 + (y1 - y0) * k / 5
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(yv):.1f}" y2="{py(yv):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{py(yv) + 4:.1f}" text-anchor="end" font-size="11">{yv:.2f}</text>')
        xv = x0 + (x1 - x0) * k / 5
        parts.append(f'<text x="{px(xv):.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="11">'
                     f'{xv:.2f}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" font-size="12">'
                 'train-test distance of the level</text>')
    parts.append(f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" font-size="12" '
                 f'transform="rotate(-90 14 {top + ph / 2:.1f})">Recall@1 (solid: {n} classes; dashed: all)</text>')
    for k, (name, matched, full) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        for cls, pts, dash in (("curve", matched, ""), ("curve-full", full, ' stroke-dasharray="4 3"')):
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            parts.append(f'<polyline class="{cls}" fill="none" stroke="{color}" stroke-width="{2 if not dash else 1}"'
                         f'{dash} points="{path}"/>')
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>' for x, y in matched]
        ly = top + 12 + 16 * k
        parts.append(f'<line x1="{left + pw + 10}" x2="{left + pw + 28}" y1="{ly - 4}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="2"/><text x="{left + pw + 32}" y="{ly}" font-size="11">'
                     f'{html_text(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


@dataclass
class Board:
    dataset: str
    version: str
    protocol: str | None      # None: no entry yet
    ranked: list[Ranked]
    split_set: SplitSet
    matched: tuple[int, int] | None = None   # (N, D) of the entries' matched curve; None: no entry yet

    @property
    def _default_matching(self) -> bool:
        return self.matched is None or self.matched == (matched_count(self.split_set, "min"), DEFAULT_DRAWS)

    @property
    def title(self) -> str:
        return (f"{self.dataset} @ {self.version}" + (f", {self.protocol} protocol" if self.protocol else "")
                + ("" if self._default_matching else f", matched at {self.matched[0]} classes in "
                   f"{self.matched[1]} draws"))

    @property
    def anchor(self) -> str:
        suffix = "" if self._default_matching else f"-n{self.matched[0]}-d{self.matched[1]}"
        return f"{self.dataset}-{self.version}-{self.protocol or 'empty'}{suffix}".replace(".", "-").replace("+", "-")


EMPTY = "No entry yet: this board fills when the first submission verifies (see How to submit)."


def collect_boards(verifications: Sequence[Verification]) -> list[Board]:
    """One board per published split set, protocol and matched curve (N, D: the split set's default unless an
    entry's protocol card states others), an empty one where no entry exists."""
    boards = []
    for dataset, version, path in sorted(set(iter_published())):
        mine = [v for v in verifications if v.ok and (v.submission.meta["dataset"], v.submission.meta[
            "split_version"]) == (dataset, version)]
        kinds = sorted({(v.submission.meta["protocol"], matching(v)) for v in mine})
        split_set = read_split_set_once(path)
        if not kinds:
            boards.append(Board(dataset, version, None, [], split_set))
        for protocol, matched in kinds:
            boards.append(Board(dataset, version, protocol, rank_entries(
                [v for v in mine if (v.submission.meta["protocol"], matching(v)) == (protocol, matched)]),
                split_set, matched))
    return boards


def first_problem(v: Verification) -> str:
    """An entry's first problem with its folder's path left out (the board must not depend on where it is built)."""
    return v.reasons[0]


def render_markdown(boards: list[Board], rejected: Sequence[Verification]) -> str:
    out = ["# oodml leaderboard", "",
           "<!-- generated by `oodml leaderboard build`; do not edit by hand -->", "",
           "Every number here is recomputed from the submitted embeddings by `oodml leaderboard verify` "
           "(CI runs it on every entry); self-reported numbers are only checked against it. Ranks come from mean "
           "Recall@1 over the levels of the split set on the class-count-matched curve: Recall@1 rises when a "
           "level has fewer test classes, so every level is scored on N of its test classes (N the same at every "
           "level, by default the fewest of any level; the column headers say N) in D seeded draws (20 unless "
           "the entry's protocol card states otherwise), averaged, as `oodml evaluate` reports it; the full "
           "test sets' mean Recall@1 is a column beside it. The intervals combine a 95% paired bootstrap over "
           f"test classes ({DRAWS} draws, one resample of each level's test classes applied to every matched "
           "draw of every entry) with the draws' spread (standard error, in quadrature), and an entry whose gap "
           "to the entry above has an interval holding 0 shares its rank (a tie). AUC is the area under the "
           "matched Recall@1 against the level distance scaled to [0, 1]; MAP@R and the per-level Recall@1 are "
           "matched too. "
           "Few-shot gain: mean over levels of the episodes' n-way accuracy with the entry's best adaptation, "
           "minus nearest-support-image accuracy without adaptation. Test classes seen in pretraining: per level, "
           "the test classes with a counterpart in the entry's declared pretraining data (class overlap: the same "
           "species; category overlap: the same kind of object), from the maps `oodml splits audit --pretraining` "
           "uses; unknown when the data has no class list. The sortable page with the degradation "
           "curves (matched solid, full dashed) is `index.html`.", "", "## How to submit", "", STEPS, "",
           f"The format (schema version {SCHEMA_VERSION}) is described in `oodml/leaderboard/submission.py` and "
           "checked by `oodml leaderboard verify`: `submission.json` plus float16 Parquet embeddings of every "
           "level's test images (and, for fine-tuned few-shot adaptation, of each episode's images after "
           "adaptation).", ""]
    for board in boards:
        out += [f"## {board.title}", ""]
        if not board.ranked:
            out += [EMPTY, ""]
            continue
        header, rows = _board_rows(board.ranked, markdown_text, board.split_set)
        out += [_markdown_table(header, rows), ""]
        spread = [(r.meta["method"], r.meta["seeds"]) for r in board.ranked if r.meta["seeds"].get("sd_mean_recall@1")]
        if spread:
            out += ["Spread over seeds (full-set mean Recall@1 of each run; the submitted run is the first): "
                    + "; ".join(f"{markdown_text(m)}: " + ", ".join(_fmt(x) for x in s["mean_recall@1"])
                                for m, s in spread) + ".", ""]
    if rejected:
        out += ["## Entries that did not verify (not shown)", ""]
        out += [f"- {markdown_text(v.path.name)}: {markdown_text(first_problem(v))}" for v in rejected] + [""]
    return "\n".join(out)


_SCRIPT = """
function sortTable(table, col, dir) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
    const nx = parseFloat(x), ny = parseFloat(y);
    const c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
    return dir === "asc" ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => th.setAttribute("aria-sort",
    i === col ? (dir === "asc" ? "ascending" : "descending") : "none"));
}
document.querySelectorAll("table.board").forEach(table => {
  Array.from(table.tHead.rows[0].cells).forEach((th, col) => th.addEventListener("click", () =>
    sortTable(table, col, th.getAttribute("aria-sort") === "descending" ? "asc" : "desc")));
});
// #sort=<table id>:<column>:<asc|desc> opens the page sorted (shareable, and used by the browser test)
const m = location.hash.match(/^#sort=([^:]+):(\\d+):(asc|desc)$/);
if (m && document.getElementById(m[1])) sortTable(document.getElementById(m[1]), parseInt(m[2]), m[3]);
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.board { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
table.board th, table.board td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
table.board th { background: #f3f3f3; cursor: pointer; user-select: none; }
table.board th[aria-sort=ascending]::after { content: " \\25B2"; }
table.board th[aria-sort=descending]::after { content: " \\25BC"; }
table.board td:nth-child(2) { text-align: left; }
details { margin: 0.3em 0; font-size: 13px; }
code { font-size: 12px; }
"""


def _links_html(meta: dict) -> str:
    """The entry's paper and code links; a URL that is not http(s) is left out (submission checks refuse it too)."""
    return " ".join(f'<a href="{html_text(url)}">{kind}</a>' for kind in ("paper", "code")
                    if is_web_url(url := meta[kind]))


def render_html(boards: list[Board], rejected: Sequence[Verification]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>oodml leaderboard</title>",
             f"<style>{_STYLE}</style></head><body>", "<h1>oodml leaderboard</h1>",
             "<p>Generated by <code>oodml leaderboard build</code> from verified entries only: every number is "
             "recomputed from the submitted embeddings. Click a column to sort. Ranks and the R@1 N= columns are on "
             "the class-count-matched curve (every level scored on N of its test classes in seeded draws, "
             "averaged); the curves show it solid and the full test sets dashed. Intervals combine 95% paired "
             "bootstrap intervals over test classes with the draws' spread; entries whose gap to the entry above "
             "holds 0 share a rank.</p>"]
    for board in boards:
        parts.append(f'<h2 id="{board.anchor}">{html.escape(board.title)}</h2>')
        if not board.ranked:
            parts.append(f'<p class="empty">{html.escape(EMPTY)}</p>')
            continue
        header, rows = _board_rows(board.ranked, str, board.split_set)
        parts.append(f'<table class="board" id="board-{board.anchor}"><thead><tr>' +
                     "".join(f'<th aria-sort="none">{html.escape(h)}</th>' for h in header) + "</tr></thead><tbody>")
        for row in rows:
            parts.append("<tr>" + "".join(f'<td data-value="{html_text(str(v))}">{html_text(t)}</td>'
                                          for t, v in row) + "</tr>")
        parts.append("</tbody></table>")
        parts.append(curves_svg(board.ranked))
        for r in board.ranked:
            m = r.meta
            parts.append(f"<details><summary>{html_text(m['method'])}</summary><p>{html_text(m['description'])}"
                         f"</p><p>authors: {html_text(', '.join(m['authors']) or '-')} {_links_html(m)}</p>"
                         f"<p>training data: {html_text(m['training_data'])}</p>"
                         f"<p>{html_text(overlap_details(m, board.split_set))}</p>"
                         + (f"<p>{html_text(card)}</p>" if (card := card_details(m)) else "") + "<p>adaptations: "
                         f"{html_text(', '.join(m['adaptations']) or 'none')}; seeds: "
                         f"{html_text(', '.join(_fmt(x) for x in m['seeds'].get('mean_recall@1', [])))}</p>"
                         f"<p>split digest <code>{html_text(m['split_digest'][:16])}</code>, oodml "
                         f"{html_text(m['oodml_version'])}, submitted {html_text(m['date'])}</p></details>")
    if rejected:
        parts.append("<h2>Entries that did not verify (not shown)</h2><ul>" + "".join(
            f"<li><code>{html_text(v.path.name)}</code>: {html_text(first_problem(v))}</li>" for v in rejected)
            + "</ul>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def build(root: str | Path = "leaderboard", *, data_root: str | Path | None = None,
          verifications: Sequence[Verification] | None = None) -> tuple[list[Path], list[Verification]]:
    """Verify every entry under ``root`` and write ``root/README.md`` and ``root/index.html``.  What killed
    submissions left beside the entries (hidden temporaries that no live submission claims) is removed first.

    Returns the files written and the entries that did not verify (they are listed, never rendered).
    """
    root = Path(root)
    for folder in sorted((root / "submissions").glob("*/*")):
        remove_abandoned(folder)
    if verifications is None:
        verifications = verify_entries(iter_entries(root), data_root=data_root)
    rejected = [v for v in verifications if not v.ok]
    boards = collect_boards(verifications)
    written = []
    for name, text in (("README.md", render_markdown(boards, rejected)), ("index.html", render_html(boards, rejected))):
        with atomic_path(root / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(root / name)
    return written, rejected
