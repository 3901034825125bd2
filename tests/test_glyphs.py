"""The embedded glyphs dataset: shipped bytes, checked on load, no rendering; and the tool that rendered them."""

import hashlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from oodml import OodmlError
from oodml.cli import main
from oodml.datasets import glyphs as G
from oodml.datasets import load_dataset

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_FINGERPRINT = json.loads((REPO / "splits" / "glyphs" / "v1" / "metadata.json").read_text())[
    "dataset_fingerprint"]
IMAGES_PER_CLASS = 16 * 2  # fonts x jittered variants


@pytest.fixture(scope="module")
def tool():
    """``tools/render_glyphs.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location("render_glyphs", REPO / "tools" / "render_glyphs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def some(tool):
    return [tool.GlyphClass("A", "latin-upper"), tool.GlyphClass("ж", "cyrillic-lower"),
            tool.GlyphClass("∂", "symbol")]


# --- the dataset as oodml ships it ----------------------------------------------------------

def test_glyphs_has_enough_classes_images_and_scripts(glyphs):
    counts = glyphs.class_counts()
    assert len(glyphs.classes) == 330 and len(glyphs) == 10_560
    assert counts.min() == counts.max() == IMAGES_PER_CLASS
    groups = set(glyphs.metadata["group"])
    assert {"latin-upper", "latin-lower", "digit", "greek-lower", "cyrillic-upper", "symbol"} <= groups
    image, label = glyphs[0]
    assert image.mode == "RGB" and image.size == (G.SIZE, G.SIZE)
    assert glyphs.classes[label] == "U+0021 EXCLAMATION MARK"
    assert glyphs.sample_ids[0] == "U+0021/DejaVuSans-0.png"


def test_loading_renders_nothing_and_gives_the_published_fingerprint(tmp_path):
    script = """
import sys
sys.modules["matplotlib"] = sys.modules["fontTools"] = None  # importing either now fails
from PIL import ImageFont

def refuse(*args, **kwargs):
    raise RuntimeError("glyphs must not render at run time")

ImageFont.truetype = ImageFont.FreeTypeFont = refuse
from oodml.datasets import load_dataset

ds = load_dataset("glyphs")
image, label = ds[1234]  # U+004C/DejaVuSerif-Bold-0.png
print(ds.fingerprint, image.size, ds.classes[label], sep="|")
"""
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          env={**os.environ, "OODML_HOME": str(home), "OODML_QUIET": "1"})
    assert proc.returncode == 0, proc.stderr
    fingerprint, size, name = proc.stdout.strip().split("|")
    assert fingerprint == PUBLISHED_FINGERPRINT
    assert size == "(32, 32)" and name == "U+004C LATIN CAPITAL LETTER L"
    assert not home.exists()  # nothing cached, nothing written


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete"])
def test_a_damaged_data_file_is_refused_in_one_line(damage, tmp_path, monkeypatch, capsys):
    data = bytearray(G.DATA_FILE.read_bytes())
    copy = tmp_path / "glyphs.parquet"
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0xFF
        copy.write_bytes(data)
    elif damage == "truncate":
        copy.write_bytes(data[:-100])
    monkeypatch.setattr(G, "DATA_FILE", copy)
    with pytest.raises(OodmlError) as exc:
        load_dataset("glyphs")
    message = str(exc.value)
    assert "\n" not in message and str(copy) in message and "reinstall oodml" in message
    assert ("missing" if damage == "delete" else "damaged") in message
    assert main(["-q", "datasets", "info", "glyphs"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_images_are_decoded_from_memory_and_the_dataset_pickles(glyphs):
    assert glyphs.root == G.DATA_FILE
    assert glyphs.sample_size(77) == len(glyphs.encoded[77]) and glyphs.encoded[77].startswith(b"\x89PNG")
    with pytest.raises(OodmlError, match="not a file"):
        glyphs.path(77)
    data = pickle.dumps(glyphs)  # what a DataLoader worker receives
    assert len(data) < 4_000_000  # the 2.6 MB of PNG and little else
    copy = pickle.loads(data)
    assert copy.fingerprint == glyphs.fingerprint
    assert np.array_equal(np.asarray(copy[77][0]), np.asarray(glyphs[77][0]))


def test_every_image_decodes(glyphs):
    assert glyphs.verify_images() == []


def test_homoglyphs_are_dropped_keeping_the_first_script(glyphs):
    names = set(glyphs.classes)
    assert "U+0041 LATIN CAPITAL LETTER A" in names
    assert "U+0391 GREEK CAPITAL LETTER ALPHA" not in names
    assert "U+0410 CYRILLIC CAPITAL LETTER A" not in names
    assert "U+006F LATIN SMALL LETTER O" in names
    assert "U+043E CYRILLIC SMALL LETTER O" not in names
    assert "U+0416 CYRILLIC CAPITAL LETTER ZHE" in names  # a letter only Cyrillic has


# --- a root of rendered folders ---------------------------------------------------------------

def test_a_root_of_rendered_folders_loads_from_disk(tool, some, glyphs, tmp_path):
    tool.write_folders(tmp_path / "glyphs", tool.render_dataset(some))
    ds = load_dataset("glyphs", root=tmp_path / "glyphs")
    assert ds.classes == ["U+0041 LATIN CAPITAL LETTER A", "U+0436 CYRILLIC SMALL LETTER ZHE",
                          "U+2202 PARTIAL DIFFERENTIAL"]
    assert list(ds.metadata["group"][::IMAGES_PER_CLASS]) == ["latin-upper", "cyrillic-lower", "symbol"]
    assert len(ds) == 3 * IMAGES_PER_CLASS and set(ds.sample_ids) <= set(glyphs.sample_ids)
    assert ds.layout == glyphs.layout and ds.path(0).is_file() and ds[0][0].size == (G.SIZE, G.SIZE)


@pytest.mark.parametrize(("listing", "expected"), [
    (None, "has no classes.json"),
    ("[{folder: 1}", "classes.json is malformed.*JSONDecodeError"),
    ('[{"folder": "U+0041"}]', "classes.json is malformed.*KeyError"),
    ('[{"folder": "U+0042", "name": "B", "group": "latin-upper"}]', r"U\+0041 is not listed in"),
])
def test_a_root_without_a_valid_classes_json_is_refused(listing, expected, tmp_path):
    (tmp_path / "U+0041").mkdir()
    (tmp_path / "U+0041" / "DejaVuSans-0.png").write_bytes(G.DATA_FILE.read_bytes()[:10])
    if listing is not None:
        (tmp_path / "classes.json").write_text(listing)
    with pytest.raises(OodmlError, match=expected) as exc:
        load_dataset("glyphs", root=tmp_path)
    assert "\n" not in str(exc.value)


def test_the_data_file_is_not_a_root(tmp_path):
    with pytest.raises(OodmlError, match="has no classes.json"):
        load_dataset("glyphs", root=G.DATA_FILE)


# --- the tool that rendered the bytes -----------------------------------------------------------

def test_rendering_is_deterministic_byte_for_byte(tool, some):
    first = tool.render_dataset(some)
    assert len(first) == 3 * IMAGES_PER_CLASS
    assert first == tool.render_dataset(some)


def test_this_toolchain_reproduces_the_shipped_bytes(tool, some, glyphs):
    recorded = json.loads(pq.read_schema(G.DATA_FILE).metadata[b"oodml.glyphs"])
    if recorded != tool.toolchain():
        pytest.skip(f"the shipped images were rendered with {recorded}, this machine has {tool.toolchain()}")
    shipped = dict(zip(glyphs.sample_ids, glyphs.encoded, strict=True))
    assert all(im.png == shipped[im.sample_id] for im in tool.render_dataset(some))


def test_the_tool_selects_the_shipped_classes(tool, glyphs):
    selected = sorted(tool.select_characters(), key=lambda g: g.folder)
    assert [g.name for g in selected] == glyphs.classes


def test_no_two_kept_classes_render_alike_in_any_font(tool, glyphs):
    chars = [chr(int(name.split()[0][2:], 16)) for name in glyphs.classes]
    for font in tool.FONT_FILES:
        ink = np.stack([1 - np.asarray(tool.render(c, font), dtype=np.float64).ravel() / 255 for c in chars])
        sq = (ink ** 2).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None] - 2 * ink @ ink.T, 0)
        relative = np.sqrt(d2 / ((sq[:, None] + sq[None]) / 2))
        np.fill_diagonal(relative, np.inf)
        assert relative.min() >= tool.HOMOGLYPH_DISTANCE, font


def test_jitter_changes_the_image_but_keeps_the_glyph(tool):
    clean = np.asarray(tool.render("K", "DejaVuSans.ttf"), dtype=float)
    a = np.asarray(tool.render("K", "DejaVuSans.ttf", 0), dtype=float)
    b = np.asarray(tool.render("K", "DejaVuSans.ttf", 1), dtype=float)
    assert not np.array_equal(a, b)
    assert np.abs(a - clean).mean() < 40  # still mostly the same picture (0-255 scale)
    assert tool.render("K", "STIXGeneral.ttf", 0).size == (tool.SIZE, tool.SIZE)


def test_the_tool_writes_a_data_file_the_loader_reads(tool, some, tmp_path):
    path = tmp_path / "glyphs.parquet"
    images = tool.render_dataset(some)
    tool.write_data_file(path, images)
    ds = G.read_data_file(path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert ds.sample_ids == [im.sample_id for im in images] and list(ds.encoded) == [im.png for im in images]
    assert ds.classes == [g.name for g in some] and len(ds.class_counts()) == 3
