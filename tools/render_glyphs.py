"""Render the embedded ``glyphs`` dataset and write the data file oodml ships.

This is the tool that made the bytes in ``oodml/datasets/data/glyphs.parquet``;
oodml itself never renders.  It selects the characters (coverage and homoglyph
rules, see the docstring of ``oodml/datasets/glyphs.py``), draws every
(character, font, variant) with Pillow/FreeType from the DejaVu and STIX fonts
that ship with matplotlib, and writes one zstd-compressed Parquet file, one row
per image in dataset order (class folder, then file name):

    sample_id   string  ``U+0041/DejaVuSans-0.png`` (class folder / font stem - variant)
    class_name  string  ``U+0041 LATIN CAPITAL LETTER A``
    group       string  script group, e.g. ``latin-upper``
    png         binary  the 32x32 greyscale PNG file, exactly as rendered

The file's schema metadata (key ``oodml.glyphs``) records the generator version
and the Pillow, FreeType and matplotlib versions that drew it.

Run (takes about 15 s on 2 cores):

    .venv/bin/python tools/render_glyphs.py                # rewrite the shipped data file
    .venv/bin/python tools/render_glyphs.py --out X.parquet --folders DIR
                                                           # elsewhere, plus <U+XXXX>/<font>-<variant>.png folders

It prints the file's sha256, to paste into ``DATA_SHA256`` in
``oodml/datasets/glyphs.py`` (loading refuses a file with any other hash), and
the dataset fingerprint, compared with every published ``splits/glyphs/*``.
Other font, FreeType or Pillow versions draw slightly different pixels, so a
regenerated file usually has a new fingerprint, and split sets made from the
old bytes refuse it: publish a new split set version
(``oodml make-splits glyphs --version v2``) and keep the old file in git history
for anyone reproducing results on ``glyphs@v1``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
import PIL
import pyarrow as pa
import pyarrow.parquet as pq
from fontTools.ttLib import TTFont  # ships with matplotlib
from PIL import Image, ImageDraw, ImageFilter, ImageFont, features

from oodml._fs import atomic_path
from oodml.datasets import glyphs
from oodml.datasets.base import fingerprint_of
from oodml.progress import progress
from oodml.seeding import rng_for

GENERATOR_VERSION = "1"
SIZE = glyphs.SIZE    # output side in pixels
SUPERSAMPLE = 4       # render at SIZE * SUPERSAMPLE, then area-average down
FONT_PX = 76          # font size at the supersampled resolution
BASELINE = 0.74       # baseline height as a fraction of the canvas, from the top
VARIANTS = 2          # jittered images per (character, font)
HOMOGLYPH_DISTANCE = 0.1  # see the glyphs module docstring, rule 2
PUBLISHED_SPLITS = Path(__file__).resolve().parents[1] / "splits" / "glyphs"

FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)


def _span(first: int, last: int, skip: tuple[int, ...] = ()) -> tuple[int, ...]:
    return tuple(c for c in range(first, last + 1) if c not in skip)


#: Script groups in priority order (earlier groups win homoglyph ties): name -> code points.
GROUPS: dict[str, tuple[int, ...]] = {
    "latin-upper": _span(0x41, 0x5A),
    "latin-lower": _span(0x61, 0x7A),
    "digit": _span(0x30, 0x39),
    "greek-upper": _span(0x391, 0x3A9, skip=(0x3A2,)),
    "greek-lower": _span(0x3B1, 0x3C9),
    "cyrillic-upper": _span(0x400, 0x42F),
    "cyrillic-lower": _span(0x430, 0x45F),
    "ipa": _span(0x250, 0x2AF),
    "box-drawing": _span(0x2500, 0x256C),
    "symbol": tuple(ord(c) for c in "!\"#$%&'()*+/<=>?@[\\]^{|}~¡¢£¤¥¦§©«¬®°±¶»¿×÷†‡•‰€№™∂"),
}


@dataclass(frozen=True)
class GlyphClass:
    """One class of the dataset: a character and its script group."""

    char: str
    group: str

    @property
    def folder(self) -> str:
        """Directory name of the class, e.g. ``U+0041``."""
        return f"U+{ord(self.char):04X}"

    @property
    def name(self) -> str:
        """Class name, e.g. ``U+0041 LATIN CAPITAL LETTER A``."""
        return f"{self.folder} {unicodedata.name(self.char)}"


@dataclass(frozen=True)
class RenderedImage:
    """One image of the dataset: its sample id, its class and its PNG file bytes."""

    sample_id: str
    glyph: GlyphClass
    png: bytes


def _font_path(filename: str) -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / filename


@cache
def _font(filename: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_path(filename)), FONT_PX)


@cache
def _coverage(filename: str) -> frozenset[int]:
    return frozenset(TTFont(str(_font_path(filename)), lazy=True).getBestCmap())


def toolchain() -> dict[str, object]:
    """What determines the rendered bytes: generator version and parameters, fonts, and library versions."""
    return {"generator": GENERATOR_VERSION, "pillow": PIL.__version__, "freetype": features.version("freetype2"),
            "matplotlib": matplotlib.__version__, "fonts": list(FONT_FILES),
            "render": [SIZE, SUPERSAMPLE, FONT_PX, BASELINE, VARIANTS, HOMOGLYPH_DISTANCE]}


def render(char: str, font_file: str, variant: int | None = None) -> Image.Image:
    """Draw ``char`` in ``font_file`` as a ``SIZE`` x ``SIZE`` greyscale (mode ``L``) image, ink dark on white.

    ``variant=None`` is the clean rendering (used to find homoglyphs); an int
    selects a deterministic jitter: rotation within 7 degrees, scale 0.88-1.08,
    shear within 0.12, shift within 2 output pixels, and a thinner, unchanged
    or bolder stroke.
    """
    side = SIZE * SUPERSAMPLE
    font = _font(font_file)
    canvas = Image.new("L", (side, side), 0)
    x0, _, x1, _ = font.getbbox(char, anchor="ls")
    baseline = round(side * BASELINE)
    ImageDraw.Draw(canvas).text((side / 2 - (x0 + x1) / 2, baseline), char, fill=255, font=font, anchor="ls")
    if variant is not None:
        rng = rng_for(GENERATOR_VERSION, char, font_file, variant)
        angle, scale = math.radians(rng.uniform(-7, 7)), rng.uniform(0.88, 1.08)
        shear = rng.uniform(-0.12, 0.12)
        dx, dy = rng.uniform(-2, 2, size=2) * SUPERSAMPLE
        stroke = int(rng.integers(-1, 2))  # -1 thinner, 0 as drawn, +1 bolder
        if stroke:
            size = 3 if stroke < 0 else 5
            canvas = canvas.filter(ImageFilter.MinFilter(size) if stroke < 0 else ImageFilter.MaxFilter(size))
        # Inverse map (output -> input) about the canvas centre, as Image.transform expects.
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        a, b, d, e = cos, sin + shear * cos, -sin, cos - shear * sin
        c = side / 2 - a * (side / 2 + dx) - b * (side / 2 + dy)
        f = side / 2 - d * (side / 2 + dx) - e * (side / 2 + dy)
        canvas = canvas.transform((side, side), Image.Transform.AFFINE, (a, b, c, d, e, f),
                                  resample=Image.Resampling.BILINEAR)
    small = canvas.resize((SIZE, SIZE), Image.Resampling.BOX)
    return Image.eval(small, lambda v: 255 - v)


def select_characters() -> list[GlyphClass]:
    """Apply the coverage and homoglyph rules of the glyphs module docstring; return the kept classes in order."""
    covered = frozenset.intersection(*(_coverage(f) for f in FONT_FILES))
    candidates = [GlyphClass(chr(c), group) for group, codes in GROUPS.items() for c in codes
                  if c in covered and unicodedata.category(chr(c))[0] in "LNPS"]
    # Clean renderings, shape (fonts, candidates, pixels), ink as 1.0.
    clean = np.stack([np.stack([1.0 - np.asarray(render(g.char, f), dtype=np.float64).ravel() / 255.0
                                for g in candidates]) for f in FONT_FILES])
    inked = clean.sum(axis=(0, 2)) > 0
    sq = (clean ** 2).sum(axis=2)  # (fonts, candidates)
    kept: list[int] = []
    for i in np.flatnonzero(inked):
        if kept:
            # Squared distances to every kept class in every font, via the Gram trick.
            gram = np.einsum("fp,fkp->fk", clean[:, i], clean[:, kept])
            d2 = sq[:, i:i + 1] + sq[:, kept] - 2 * gram
            relative = np.sqrt(np.maximum(d2, 0) / ((sq[:, i:i + 1] + sq[:, kept]) / 2))
            if relative.min() < HOMOGLYPH_DISTANCE:
                continue
        kept.append(int(i))
    return [candidates[i] for i in kept]


def png_bytes(image: Image.Image) -> bytes:
    """The PNG file of ``image`` (no ``optimize`` pass, so the bytes depend only on the pixels and Pillow's zlib)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def render_dataset(classes: list[GlyphClass]) -> list[RenderedImage]:
    """Every image of ``classes``: ``len(classes) * len(FONT_FILES) * VARIANTS`` of them, sorted by sample id."""
    images = []
    for g in progress(classes, "render glyphs", unit="class"):
        for font_file in FONT_FILES:
            stem = font_file.removesuffix(".ttf")
            images += [RenderedImage(f"{g.folder}/{stem}-{v}.png", g, png_bytes(render(g.char, font_file, v)))
                       for v in range(VARIANTS)]
    # Fixed-width folders make this the class-folder-then-file-name order the folder loader scans in.
    return sorted(images, key=lambda im: im.sample_id)


def write_data_file(path: Path, images: list[RenderedImage]) -> None:
    """Write ``images`` as the zstd Parquet file described in the module docstring (atomically)."""
    table = pa.table({
        "sample_id": pa.array([im.sample_id for im in images], pa.string()),
        "class_name": pa.array([im.glyph.name for im in images], pa.string()),
        "group": pa.array([im.glyph.group for im in images], pa.string()),
        "png": pa.array([im.png for im in images], pa.binary()),
    }).replace_schema_metadata({"oodml.glyphs": json.dumps(toolchain(), sort_keys=True)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=19)


def write_folders(out: Path, images: list[RenderedImage]) -> None:
    """Write ``images`` as ``out/<U+XXXX>/<font>-<variant>.png`` plus ``out/classes.json`` (folder, name,
    character, group per class): the layout ``load_dataset("glyphs", root=out)`` reads.  ``out`` must not exist."""
    out.mkdir(parents=True)
    for im in images:
        (out / im.glyph.folder).mkdir(exist_ok=True)
        (out / im.sample_id).write_bytes(im.png)
    classes = list(dict.fromkeys(im.glyph for im in images))
    meta = [{"folder": g.folder, "name": g.name, "char": g.char, "group": g.group} for g in classes]
    (out / "classes.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _report(path: Path, images: list[RenderedImage]) -> None:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    fingerprint = fingerprint_of([im.sample_id for im in images], [im.glyph.name for im in images],
                                 [len(im.png) for im in images])
    print(f"wrote {path}: {len(images)} images in {len({im.glyph for im in images})} classes, "
          f"{sum(len(im.png) for im in images):,} bytes of PNG, {len(data):,} bytes on disk")
    print(f"sha256       {sha}" + ("  (= DATA_SHA256)" if sha == glyphs.DATA_SHA256 else
                                   "  (differs from DATA_SHA256 in oodml/datasets/glyphs.py: paste it there)"))
    published = {p.parent.name: json.loads(p.read_text())["dataset_fingerprint"]
                 for p in sorted(PUBLISHED_SPLITS.glob("*/metadata.json"))}
    same = [version for version, fp in published.items() if fp == fingerprint]
    print(f"fingerprint  {fingerprint}  " + (f"(= published glyphs@{', @'.join(same)})" if same else
          "(matches no published glyphs split set: publish a new version, "
          "`oodml make-splits glyphs --version vN`)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=glyphs.DATA_FILE, help="data file to write "
                        "(default: the one oodml ships, %(default)s)")
    parser.add_argument("--folders", type=Path, help="also write <U+XXXX>/<font>-<variant>.png folders and "
                        "classes.json into this new directory (for load_dataset('glyphs', root=DIR))")
    args = parser.parse_args(argv)
    if args.folders is not None and args.folders.exists():
        parser.error(f"{args.folders} exists; --folders needs a new directory")
    images = render_dataset(select_characters())
    write_data_file(args.out, images)
    if args.folders is not None:
        write_folders(args.folders, images)
    _report(args.out, images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
