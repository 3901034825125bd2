"""The rendered board in a real headless browser (Debian's chromium): tables render, sorting works, curves show.

`make test` installs chromium when it is missing; the screenshot is kept in
build/test-artifacts/leaderboard.png.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fixtures import ENTRY_MATCH_DRAWS

from oodml.embedding import read_embedding_table, write_embedding_table
from oodml.leaderboard import build
from oodml.leaderboard.board import PALETTE
from oodml.leaderboard.submission import file_record

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make test` installs it (apt-get install "
                                "chromium)")


def chromium(*args: str) -> str:
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--hide-scrollbars", *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


@pytest.fixture(scope="module")
def board(leaderboard_entry, tmp_path_factory):
    """A board with the tiny entry and a noisier copy of it (so the two rank differently)."""
    root = tmp_path_factory.mktemp("browser") / "leaderboard"
    shutil.copytree(leaderboard_entry.parents[3] / "submissions", root / "submissions")
    noisy = root / "submissions" / "glyphs" / "v1" / "noisy"
    shutil.copytree(root / "submissions" / "glyphs" / "v1" / "tiny", noisy)
    meta = json.loads((noisy / "submission.json").read_text())
    rng = np.random.default_rng(0)
    for name in meta["files"]:
        ids, values = read_embedding_table(noisy / name)
        write_embedding_table(noisy / name, ids, values + rng.normal(0, 1.0, values.shape), dtype=np.float16)
        meta["files"][name] = file_record(noisy / name)
    meta.update(entry="noisy", method="noisy", claimed={})
    (noisy / "submission.json").write_text(json.dumps(meta))
    written, rejected = build(root)
    assert rejected == []
    return root / "index.html"


def first_column_order(dom: str, table_id: str) -> list[str]:
    table = dom[dom.index(f'id="{table_id}"'):]
    table = table[:table.index("</table>")]
    return re.findall(r'<tr><td data-value="[^"]*">[^<]*</td><td data-value="([^"]*)"', table)


def test_the_table_renders_and_sorts_in_a_browser(board):
    # the shared entry is matched in fewer draws than the default, so its board is named for its own setting
    table = f"board-glyphs-v1-zero-shot-n132-d{ENTRY_MATCH_DRAWS}"
    built = first_column_order(board.read_text(), table)
    assert sorted(built) == ["noisy", "tiny"]
    ascending = chromium("--dump-dom", f"{board.as_uri()}#sort={table}:2:asc")
    descending = chromium("--dump-dom", f"{board.as_uri()}#sort={table}:2:desc")
    assert 'aria-sort="ascending"' in ascending and 'aria-sort="descending"' in descending  # the script ran
    # column 2 is mean Recall@1: noise drives the copy to chance level, below the model it was made from
    assert first_column_order(ascending, table) == ["noisy", "tiny"]
    assert first_column_order(descending, table) == ["tiny", "noisy"]


def test_the_curves_are_visible_in_a_screenshot(board):
    from PIL import Image

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "leaderboard.png"
    shot.unlink(missing_ok=True)
    chromium(f"--screenshot={shot}", "--window-size=1400,1100", board.as_uri())
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    for color in PALETTE[:2]:                              # one curve per entry, in the first two colours
        rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(image - rgb).sum(2) < 30).sum() > 100, f"no {color} curve in {shot}"
