"""The embedded glyphs dataset: size, determinism, cache, and the homoglyph rule."""

import time

import numpy as np
from PIL import Image

from oodml.datasets import glyphs as G
from oodml.datasets import load_dataset


def test_glyphs_has_enough_classes_images_and_scripts(glyphs):
    counts = glyphs.class_counts()
    assert len(glyphs.classes) >= 300
    assert counts.min() >= 24 and counts.min() == counts.max() == len(G.FONT_FILES) * G.VARIANTS
    groups = set(glyphs.metadata["group"])
    assert {"latin-upper", "latin-lower", "digit", "greek-lower", "cyrillic-upper", "symbol"} <= groups
    image, label = glyphs[0]
    assert image.mode == "RGB" and image.size == (G.SIZE, G.SIZE)
    assert glyphs.classes[label] == "U+0021 EXCLAMATION MARK"


def test_generation_is_deterministic_byte_for_byte(glyphs, tmp_path):
    some = [G.GlyphClass("A", "latin-upper"), G.GlyphClass("ж", "cyrillic-lower"), G.GlyphClass("∂", "symbol")]
    G.generate(tmp_path / "one", some)
    G.generate(tmp_path / "two", some)
    for g in some:
        for a in sorted((tmp_path / "one" / g.folder).iterdir()):
            b = tmp_path / "two" / g.folder / a.name
            assert a.read_bytes() == b.read_bytes()
            cached = glyphs.root / g.folder / a.name
            assert a.read_bytes() == cached.read_bytes()


def test_second_load_hits_the_cache(glyphs):
    marker = glyphs.root / "classes.json"
    mtime = marker.stat().st_mtime_ns
    start = time.perf_counter()
    again = load_dataset("glyphs")
    assert time.perf_counter() - start < 5
    assert marker.stat().st_mtime_ns == mtime
    assert again.fingerprint == glyphs.fingerprint


def test_homoglyphs_are_dropped_keeping_the_first_script(glyphs):
    names = set(glyphs.classes)
    assert "U+0041 LATIN CAPITAL LETTER A" in names
    assert "U+0391 GREEK CAPITAL LETTER ALPHA" not in names
    assert "U+0410 CYRILLIC CAPITAL LETTER A" not in names
    assert "U+006F LATIN SMALL LETTER O" in names
    assert "U+043E CYRILLIC SMALL LETTER O" not in names
    assert "U+0416 CYRILLIC CAPITAL LETTER ZHE" in names  # a letter only Cyrillic has


def test_no_two_kept_classes_render_alike_in_any_font(glyphs):
    chars = [chr(int(name.split()[0][2:], 16)) for name in glyphs.classes]
    for font in G.FONT_FILES:
        ink = np.stack([1 - np.asarray(G.render(c, font), dtype=np.float64).ravel() / 255 for c in chars])
        sq = (ink ** 2).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None] - 2 * ink @ ink.T, 0)
        relative = np.sqrt(d2 / ((sq[:, None] + sq[None]) / 2))
        np.fill_diagonal(relative, np.inf)
        assert relative.min() >= G.HOMOGLYPH_DISTANCE, font


def test_jitter_changes_the_image_but_keeps_the_glyph(glyphs):
    clean = np.asarray(G.render("K", "DejaVuSans.ttf"), dtype=float)
    a = np.asarray(G.render("K", "DejaVuSans.ttf", 0), dtype=float)
    b = np.asarray(G.render("K", "DejaVuSans.ttf", 1), dtype=float)
    assert not np.array_equal(a, b)
    assert np.abs(a - clean).mean() < 40  # still mostly the same picture (0-255 scale)
    assert isinstance(G.render("K", "STIXGeneral.ttf", 0), Image.Image)
