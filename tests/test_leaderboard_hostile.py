"""Hostile entries: scripts in links and text, one bad entry among good ones, absurd numbers, fuzzed documents.

A submission is untrusted input that ends up on a web page and in a README a
reader opens on GitHub: no submitted string may become markup there, no link
may be anything but http(s), no single bad entry may stop the others from being
verified and shown, and no document gives anything but one-line problems.
"""

import copy
import html
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fixtures import edit_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oodml import OodmlError
from oodml.cli import main
from oodml.leaderboard import EntryInfo, Verification, build, read_submission, submit, verify
from oodml.leaderboard.board import collect_boards, markdown_text, render_html, render_markdown
from oodml.leaderboard.submission import FIELDS, Submission, is_web_url, schema_problems
from oodml.leaderboard.verify import _compare_claims, published_split_set
from oodml.splits.catalogue import split_set_copies

PAYLOAD = "<script>alert(1)</script><img src=x onerror=alert(1)>|[x](javascript:alert(1))`*a*_b_\\"
STRING_FIELDS = [name for name, types in FIELDS.items() if str in types]


def copy_of(entry: Path, root: Path, name: str = "tiny") -> Path:
    """A copy of ``entry`` as ``root/submissions/glyphs/v1/<name>`` (its ``entry`` field still says tiny)."""
    dest = root / "submissions" / "glyphs" / "v1" / name
    shutil.copytree(entry, dest)
    return dest


@pytest.fixture(scope="module")
def verified(leaderboard_entry, glyphs) -> Verification:
    """The tiny entry, verified once: its scores stand in for those of copies with the same embeddings."""
    return verify(leaderboard_entry, dataset=glyphs)


def checked(path: Path, verified: Verification) -> Verification:
    """``path`` checked as :func:`verify` checks it, with the scores of the entry it was copied from.

    The copies here differ from it in ``submission.json`` only, so re-scoring
    their embeddings would give the same numbers: these tests are about what is
    refused and how the rest renders.
    """
    sub, problems = read_submission(path)
    return Verification(path, sub, verified.scores if sub else None, problems)


class Page(HTMLParser):
    """The tags, attributes and text of an HTML page, as a browser's parser sees them."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += attrs

    def handle_data(self, data):
        self.text.append(data)


def html_injections(page: str) -> list[str]:
    """What in ``page`` could run a script: a tag the page does not make itself, an event handler, a link that is
    not http(s)."""
    parsed = Page(page)
    found = [f"<{t}>" for t in parsed.tags if t in ("img", "iframe", "object", "embed", "form", "base", "link")]
    found += [f"a second <{t}>" for t in ("script", "style", "meta", "title") if parsed.tags.count(t) > 1]
    found += [f"{k}=" for k, _ in parsed.attributes if k.startswith("on")]
    found += [f"href={v}" for k, v in parsed.attributes if k == "href" and not is_web_url(v)]
    return found


UNESCAPED = r"(?<!\\)(?:\\\\)*"


def markdown_injections(readme: str) -> list[str]:
    """What Markdown (GitHub's included) would read as markup on the README lines that carry submitted text.

    Those are the table rows, the spread-over-seeds line and the list of
    entries not shown.  Markup there is a raw ``<`` (a tag), an unescaped
    backtick (code), ``](`` (a link), ``*`` or ``_`` (emphasis), or a table row
    with more cells than its header.
    """
    found, header_cells = [], None
    for line in readme.splitlines():
        if line.startswith("| rank |"):
            header_cells = len(re.findall(UNESCAPED + r"\|", line))
            continue
        if not line.startswith(("| ", "- ", "Spread over seeds")):
            continue
        if "<" in line:
            found.append(f"raw '<' in {line!r}")
        found += [f"unescaped {c!r} in {line!r}" for c in ("`", "](", "*", "_")
                  if re.search(UNESCAPED + re.escape(c), line)]
        if line.startswith("| ") and len(re.findall(UNESCAPED + r"\|", line)) != header_cells:
            found.append(f"table row with another number of cells than its header: {line!r}")
    return found


def as_read(markdown: str) -> str:
    """The text a reader sees for escaped Markdown inline text: backslash escapes and entities resolved."""
    return html.unescape(re.sub(r"\\(.)", r"\1", markdown))


def test_markdown_text_reads_back_as_the_original_and_holds_no_markup():
    line = f"| 1 | {markdown_text(PAYLOAD)} |"
    assert as_read(markdown_text(PAYLOAD)) == PAYLOAD
    assert markdown_injections("| rank | method |\n" + line) == []
    assert markdown_injections("| rank | method |\n| 1 | <b>x</b> | `y` | [z](javascript:0) |") != []
    assert markdown_text("two\nlines\u202e here") == "two lines here"


@pytest.mark.parametrize("url", [
    "javascript:alert(document.domain)", "JaVaScRiPt:alert(1)", " javascript:alert(1)", "data:text/html,<b>x</b>",
    "vbscript:msgbox(1)", "//evil.example/x", "/relative", "ftp://example.org/paper.pdf", "https://",
    'https://example.org/" onmouseover="alert(1)', "https://arxiv.org@evil.example/", "https://a b.org",
    "https://example.org/\u202egnp.exe", "https:\\\\evil.example",
])
@pytest.mark.parametrize("field", ["paper", "code"])
def test_only_http_links_are_accepted(leaderboard_entry, tmp_path, field, url):
    path = copy_of(leaderboard_entry, tmp_path)
    edit_json(path, **{field: url})
    sub, problems = read_submission(path)
    assert sub is None and len(problems) == 1
    assert f"{field} " in problems[0] and "is not an http(s) URL; give a link such as https://" in problems[0]


def test_http_links_are_accepted_and_shown(verified, tmp_path):
    path = copy_of(verified.path, tmp_path)
    edit_json(path, paper="https://arxiv.org/abs/2106.01234", code="http://example.org/code?x=1&y=2")
    result = checked(path, verified)
    assert result.ok, result.problems
    build(tmp_path, verifications=[result])
    page = Page((tmp_path / "index.html").read_text())
    assert [v for k, v in page.attributes if k == "href"] == ["https://arxiv.org/abs/2106.01234",
                                                             "http://example.org/code?x=1&y=2"]


def test_submit_refuses_a_script_link_before_writing_anything(leaderboard_entry, tmp_path):
    results = leaderboard_entry.parents[4] / "results"            # the evaluation the tiny entry was made from
    with pytest.raises(OodmlError, match=r"cannot make a valid entry: paper 'javascript:alert\(1\)' is not an "
                                         r"http\(s\) URL"):
        submit([results], EntryInfo("x", paper="javascript:alert(1)"), root=tmp_path)
    assert not (tmp_path / "submissions").exists()


def test_verify_refuses_a_script_link_in_one_line(leaderboard_entry, tmp_path, capsys):
    path = copy_of(leaderboard_entry, tmp_path)
    edit_json(path, paper="javascript:alert(document.domain)")
    assert main(["leaderboard", "verify", str(path)]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"FAILED  {path}: submission.json: paper 'javascript:alert(document.domain)' is not an "
                   "http(s) URL; give a link such as https://arxiv.org/abs/... or null"]


def test_the_board_never_links_a_script_even_from_an_unchecked_entry(verified, tmp_path):
    """Rendering checks links again: an entry that skipped the schema check still gets no script link."""
    meta = {**verified.submission.meta, "paper": "javascript:alert(document.domain)",
            "code": "https://example.org/code"}
    result = Verification(verified.path, Submission(verified.path, meta), verified.scores, [])
    build(tmp_path, verifications=[result])
    page = (tmp_path / "index.html").read_text()
    assert html_injections(page) == [] and "javascript:" not in page and ">code</a>" in page


@pytest.mark.parametrize("field", [*STRING_FIELDS, "authors", "folder name"])
def test_every_submitted_string_is_text_on_both_pages(verified, tmp_path, field):
    """Whatever field holds the payload, the entry is either refused (and its problem listed, escaped) or shown
    with the payload as plain text: no tag, handler, script link, code span, link or extra table cell."""
    if field == "folder name":
        path = copy_of(verified.path, tmp_path, name=PAYLOAD.replace("/", ""))
    else:
        path = copy_of(verified.path, tmp_path)
        edit_json(path, **{field: [PAYLOAD] if field == "authors" else PAYLOAD})
    result = checked(path, verified)
    build(tmp_path, verifications=[result])
    page, readme = (tmp_path / "index.html").read_text(), (tmp_path / "README.md").read_text()
    if field in ("method", "folder name", "dataset"):      # the payload (or the problem quoting it) is on both
        assert "alert" in page and "alert" in readme
    assert html_injections(page) == []
    assert markdown_injections(readme) == []
    if result.ok:                         # shown: the page reads exactly what was submitted
        assert any(PAYLOAD in text for text in Page(page).text)
        if field == "method":
            assert f"| 1 | {markdown_text(PAYLOAD)} |" in readme and PAYLOAD in as_read(readme)
    else:                                 # refused: listed, with its reason, as text
        assert "did not verify (not shown)" in readme and "did not verify (not shown)" in page


def test_one_bad_entry_among_good_ones_is_named_and_the_rest_are_verified_and_shown(leaderboard_entry, tmp_path,
                                                                                   capsys):
    good, seven = copy_of(leaderboard_entry, tmp_path, "good"), copy_of(leaderboard_entry, tmp_path, "seven")
    edit_json(good, entry="good", method="good")
    edit_json(seven, entry="seven", method="seven", fewshot={"shots": [7], "episodes": 1})
    reason = "fewshot declares 7-shot episodes, but glyphs@v1 has none (available: 2, 5, 10); declare only those"

    assert main(["leaderboard", "verify", str(seven), str(good)]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"FAILED  {seven}: {reason}"
    assert out.splitlines()[1].startswith(f"ok      {good}: mean recall@1 ")
    assert err.strip() == f"oodml: error: 1 of 2 entries did not verify: {seven} (problems above)"

    assert main(["leaderboard", "build", "--root", str(tmp_path)]) == 2          # written all the same
    out, err = capsys.readouterr()
    assert f"not shown: {seven}: {reason}" in err.splitlines()
    assert "the board was written from the others" in err
    readme = (tmp_path / "README.md").read_text()
    assert "| 1 | good |" in readme and "| seven |" not in readme
    assert f"- seven: {markdown_text(reason)}" in readme
    assert "<li><code>seven</code>: fewshot declares 7-shot episodes" in (tmp_path / "index.html").read_text()


HUGE = 10 ** 400


@pytest.mark.parametrize(("changes", "message"), [
    ({"claimed": {"levels": {"1": {"recall@1": HUGE}}}}, "claimed levels/1/recall@1 = 1000"),
    ({"claimed": {"levels": {"1": {"recall@1": -HUGE}}}}, "must be a number in [0, 1]"),
    ({"claimed": {"levels": {"1": {"recall@1": float("nan")}}}}, "claimed levels/1/recall@1 = nan must be"),
    ({"claimed": {"levels": {"1": {"recall@1": float("inf")}}}}, "claimed levels/1/recall@1 = inf must be"),
    ({"claimed": {"levels": {"1": {"recall@1": 1.5}}}}, "= 1.5 must be a number in [0, 1]"),
    ({"claimed": {"levels": {"1": {"recall@1": True}}}}, "= True must be a number in [0, 1]"),
    ({"claimed": {"levels": {"1": {"recall@1": "0.9"}}}}, "= '0.9' must be a number in [0, 1]"),
    ({"claimed": {"levels": {"1": 0.5}}}, "claimed levels/1 must be an object, not 0.5"),
    ({"claimed": {"levels": {"01": {"recall@1": 0.5}}}}, "claimed levels: key '01' must match"),
    ({"claimed": {"scores": {}}}, "claimed: key 'scores' must be one of levels, fewshot"),
    ({"claimed": {"fewshot": {"2-shot": {"none": {"1": HUGE}}}}}, "claimed fewshot/2-shot/none/1 = 1000"),
    ({"fewshot": {"shots": [HUGE], "episodes": 1}}, 'fewshot must be {"shots": [distinct ints 1..999]'),
    ({"fewshot": {"shots": [2], "episodes": HUGE}}, "episodes\": int 0..9999}, not {'episodes': 1000"),
    ({"embedding_dim": HUGE}, "embedding_dim 1000"),
    ({"schema_version": HUGE}, "schema_version must be a positive integer, not 1000"),
    ({"seeds": {"runs": ["a"], "submitted": "a", "mean_recall@1": [HUGE], "sd_mean_recall@1": None}},
     "seeds must be {\"runs\": [names]"),
    ({"model_digests": {"1": HUGE}}, "model_digests must map levels"),
    ({"method": "x" * 5000}, "method is 5000 characters long; shorten it to at most 100"),
    ({"authors": ["x"] * 1000}, "authors: 1000 names, more than the 50 allowed"),
    ({"method": "two\nlines"}, "method holds the control character U+000A; use one line of plain text"),
    ({"description": "bidi \u202e override"}, "description holds the control character U+202E"),
    ({"training_data": "\ud800"}, "training_data holds the control character U+D800"),
    ({"date": "2026-13-45"}, "date '2026-13-45' is not a date; write it as YYYY-MM-DD"),
])
def test_absurd_values_are_one_line_problems(leaderboard_entry, tmp_path, glyphs, capsys, changes, message):
    """A 400-digit claim, NaN, a string where a number belongs: one line naming the field, never a traceback."""
    path = copy_of(leaderboard_entry, tmp_path)
    edit_json(path, **changes)
    result = verify(path, dataset=glyphs)
    assert not result.ok and len(result.problems) == 1
    assert message in result.problems[0] and "\n" not in result.problems[0] and len(result.problems[0]) < 400
    assert main(["leaderboard", "verify", str(path)]) == 2
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_a_deeply_nested_document_is_a_one_line_problem(leaderboard_entry, tmp_path):
    path = copy_of(leaderboard_entry, tmp_path)
    (path / "submission.json").write_text("[" * 200_000)
    assert read_submission(path) == (None, [f"{path / 'submission.json'}: not valid JSON (nested too deeply)"])


# Fuzzing: a valid submission.json with one value anywhere in it replaced by junk.
HOSTILE_TEXT = st.sampled_from([PAYLOAD, "javascript:alert(1)", "https://example.org/x", "\ud800", "\u202e",
                                "a\nb", "", " ", "x" * 3000, "2026-02-30", "0" * 64, "per-level", "prototypes",
                                "embeddings/level1.parquet", "../../etc/passwd", "1", "01", "2-shot"])
HOSTILE_NUMBER = st.sampled_from([HUGE, -HUGE, 2 ** 63, -1, 0, 1, 7, 10_000, float("nan"), float("inf"),
                                  -float("inf"), -0.0, 0.5, 1.0000001, 1e308, 5e-324])


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(HOSTILE_TEXT | st.text(max_size=8), inner, max_size=3)


JUNK = st.recursive(st.none() | st.booleans() | HOSTILE_NUMBER | st.integers() | st.floats() | HOSTILE_TEXT
                    | st.text(max_size=12), _containers, max_leaves=8)


@st.composite
def mutated(draw, meta: dict) -> dict:
    """``meta`` with the value at a random path (a field, or somewhere inside one) replaced by junk."""
    meta = copy.deepcopy(meta)
    node, key = meta, draw(st.sampled_from([*sorted(meta), "unknown"]))
    while key in node and isinstance(node[key], (dict, list)) and node[key] and draw(st.booleans()):
        node = node[key]
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
    node[key] = draw(JUNK)
    return meta


FUZZ = settings(max_examples=150, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_fuzzed_submission_documents_give_problems_or_a_safe_entry(verified, tmp_path_factory, data):
    """Any document gives one-line problems, or an entry whose claims compare and which renders as text."""
    meta = data.draw(mutated(verified.submission.meta))
    problems = schema_problems(meta)
    assert all(isinstance(p, str) and "\n" not in p and len(p) < 500 for p in problems)
    if problems:
        return
    sub = Submission(verified.path, meta)
    assert all("\n" not in p for p in _compare_claims(sub, verified.scores))
    result = Verification(verified.path, sub, verified.scores, [])
    boards = collect_boards([result])
    assert html_injections(render_html(boards, [])) == []
    assert markdown_injections(render_markdown(boards, [])) == []


@settings(max_examples=30, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_submission_files_never_raise(verified, tmp_path_factory, data):
    """read_submission on the file itself (JSON as written, NaN and lone surrogates included) never raises."""
    path = copy_of(verified.path, tmp_path_factory.mktemp("fuzz"))
    meta = data.draw(mutated(verified.submission.meta))
    (path / "submission.json").write_text(json.dumps(meta), encoding="utf-8")
    sub, problems = read_submission(path)
    assert (sub is None) == bool(problems) and all("\n" not in p for p in problems)


def test_a_split_set_changed_on_disk_between_two_verify_runs_is_read_again(leaderboard_entry, glyphs, tmp_path,
                                                                            monkeypatch):
    """The verifier reads a split set once for all the entries it verifies, but never trusts a copy read before
    its files changed: one byte flipped, the file's size and modification time set back, is refused next run."""
    copy = tmp_path / "splits" / "glyphs" / "v1"
    shutil.copytree(split_set_copies("glyphs", "v1")[0].path, copy)
    monkeypatch.setenv("OODML_SPLITS", str(tmp_path / "splits"))   # searched first
    assert verify(leaderboard_entry, dataset=glyphs).ok
    assert published_split_set("glyphs", "v1") is published_split_set("glyphs", "v1")   # read once
    table = copy / "levels.parquet"
    before, data = table.stat(), bytearray(table.read_bytes())
    data[len(data) // 2] ^= 1
    table.write_bytes(bytes(data))
    os.utime(table, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = verify(leaderboard_entry, dataset=glyphs)
    assert not result.ok and "levels.parquet" in result.problems[0], result.problems
