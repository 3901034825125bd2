"""The protocol card on the leaderboard: submit copies it, verify checks it, the board shows it."""

import json
import shutil
from pathlib import Path

import pytest
from fixtures import ENTRY_MATCH_DRAWS, edit_json

from oodml.leaderboard import build, verify
from oodml.leaderboard.board import card_details
from oodml.metrics import METRICS_VERSION


@pytest.fixture()
def entry(leaderboard_entry, tmp_path) -> Path:
    """A copy of the session's tiny entry (evaluated and submitted by this oodml), free to tamper with."""
    dest = tmp_path / "leaderboard" / "submissions" / "glyphs" / "v1" / "tiny"
    shutil.copytree(leaderboard_entry, dest)
    return dest


def card_of(entry: Path) -> dict:
    return json.loads((entry / "submission.json").read_text())["protocol_card"]


def test_submit_copies_the_card_evaluate_wrote_and_it_verifies(entry, glyphs):
    card = card_of(entry)
    assert card["metrics_version"] == METRICS_VERSION and card["protocol"] == "zero-shot"
    assert sorted(card["classes"], key=int) == [str(k) for k in range(1, 9)] and card["class_disjoint"] is True
    result = verify(entry, dataset=glyphs)
    assert result.ok, result.problems


def test_an_entry_without_a_card_still_verifies(entry, glyphs):
    meta = json.loads((entry / "submission.json").read_text())
    del meta["protocol_card"]
    (entry / "submission.json").write_text(json.dumps(meta))
    assert verify(entry, dataset=glyphs).ok


def changed(card: dict, **fields) -> dict:
    return {**card, **fields}


@pytest.mark.parametrize(("tamper", "message"), [
    (lambda c: changed(c, metrics_version=0), "records metrics version 0, this oodml scores with version 1"),
    (lambda c: changed(c, class_disjoint=False), "protocol_card 'class_disjoint' is not what oodml states"),
    (lambda c: changed(c, protocol="per-level"), "protocol_card 'protocol' is not what oodml states"),
    (lambda c: changed(c, classes={**c["classes"], "3": {**c["classes"]["3"], "test": 500}}),
     "protocol_card 'classes' is not what oodml states"),
    (lambda c: changed(c, matched={"draws": 100}), "protocol_card 'matched' must hold whole numbers"),
    (lambda c: changed(c, matched={**c["matched"], "rule": "any"}), "protocol_card 'matched' is not what oodml"),
    (lambda c: changed(c, ties="<script>alert(1)</script>"), "protocol_card 'ties'"),       # never reaches the board
    (lambda c: changed(c, extra=1), "protocol_card 'extra'"),
    (lambda c: {k: v for k, v in c.items() if k != "gallery"}, "protocol_card 'gallery'"),
    (lambda c: changed(c, preprocessing="imagenet"), "protocol_card preprocessing: a preprocessing record must be"),
    (lambda c: changed(c, preprocessing={**c["preprocessing"], "resize": 10**9}),
     "protocol_card preprocessing: preprocessing resize must be a whole number"),
    (lambda c: changed(c, preprocessing={"levels": {"1": c["preprocessing"]}}),
     "protocol_card preprocessing: a preprocessing record must be a JSON object, got NoneType"),
    (lambda c: changed(c, preprocessing={k: v for k, v in c["preprocessing"].items() if k != "interpolation"}),
     "protocol_card 'preprocessing'"),                                                    # records are whole
    (lambda c: changed(c, ks=[1, True]), "protocol_card ks must be a list of 1 to 20 whole numbers"),
    (lambda c: changed(c, ks=[0]), "protocol_card ks must be a list"),
    (lambda c: [c], "protocol_card' must be dict, not list"),
])
def test_a_card_that_is_not_what_oodml_states_is_refused_in_one_line(entry, glyphs, tamper, message):
    edit_json(entry, protocol_card=tamper(card_of(entry)))
    result = verify(entry, dataset=glyphs)
    assert not result.ok
    assert any(message in p for p in result.problems), result.problems
    assert all("\n" not in p for p in result.problems)


def test_another_preprocessing_is_stated_not_checked(entry, glyphs):
    """The embeddings cannot show how images were prepared: a whole, valid record is the submitter's word."""
    card = card_of(entry)
    edit_json(entry, protocol_card=changed(card, preprocessing={**card["preprocessing"], "interpolation": "bicubic"}))
    assert verify(entry, dataset=glyphs).ok


def test_the_board_shows_the_card_of_entries_that_carry_one(entry, glyphs, tmp_path):
    root = tmp_path / "leaderboard"
    other = entry.parent / "bare"
    shutil.copytree(entry, other)
    meta = json.loads((other / "submission.json").read_text())
    del meta["protocol_card"]
    (other / "submission.json").write_text(json.dumps({**meta, "entry": "bare", "method": "bare"}))
    build(root)
    page = (root / "index.html").read_text()
    details = {part.split("</summary>")[0]: part for part in page.split("<details><summary>")[1:]}
    assert set(details) == {"tiny", "bare"}
    assert "protocol card: metrics version 1; class-disjoint train/test; gallery: every test image" in details["tiny"]
    assert "resize 32 (shorter-side, bilinear), crop 32, mean 0.5/0.5/0.5" in details["tiny"]
    assert "excluded by index" in details["tiny"]
    assert f"also scored matched: 132 classes at every level, {ENTRY_MATCH_DRAWS} draws" in details["tiny"]
    assert "protocol card" not in details["bare"]


@pytest.mark.parametrize("junk", [
    "a card", {"preprocessing": 1}, {"preprocessing": {"levels": [1]}}, {"metrics_version": 10**5000},
    {"preprocessing": {"resize": 1, "resize_mode": "x", "interpolation": "y", "crop": 1, "mean": [0], "std": [1]},
     "classes": {"1": [5]}},
])
def test_an_unverified_card_of_another_shape_is_named_malformed_not_read(junk):
    """The board shows verified cards only; rendering an unchecked entry (as the hostile tests do) cannot fail."""
    assert card_details({"protocol_card": junk}) == "protocol card: malformed (not verified)"
    assert card_details({}) is None
