"""``glyphs``: the embedded dataset, rendered from the fonts that ship with matplotlib.

Each class is one Unicode character; each image is that character drawn in one
of 16 fonts (DejaVu Sans, Serif and Sans Mono, and STIX General, each regular,
bold, italic and bold italic) with a deterministic small affine jitter and
stroke-weight change.  Characters come in script groups (Latin, digits, Greek,
Cyrillic, IPA, box drawing, punctuation and symbols), so class structure has
natural clusters that a distribution shift can separate.

Rules, applied in this order (see :func:`select_characters`):

1. *Coverage*: a character is a candidate only if all 16 fonts have it in their
   character map (no fallback boxes), and it renders with visible ink.
2. *Homoglyphs*: candidates are visited in the group order of ``GROUPS``; a
   character is dropped when, in at least one font, its clean rendering at the
   dataset resolution is within a relative distance of ``HOMOGLYPH_DISTANCE``
   of a character already kept, where the relative distance of renderings a, b
   (ink intensities in [0, 1]) is ||a - b|| / sqrt((||a||^2 + ||b||^2) / 2).
   So Latin ``A`` stays and Greek Alpha and Cyrillic A go: identical images
   under two labels would make retrieval scores meaningless.  The threshold sits
   in a wide gap of the measured distances: 64 pairs are pixel-identical, two
   more are nearly so (Greek Phi / Cyrillic Ef 0.05, Greek pi / Cyrillic pe in
   DejaVu Serif Bold 0.056), and the next closest pair, g / IPA script g, is at
   0.11 and clearly different.

Images are 32x32 greyscale PNGs (dark ink on white), returned as RGB like every
other dataset.  Generation is deterministic for a given oodml, Pillow and
matplotlib version and is cached under ``$OODML_HOME/glyphs/<cache key>/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .._fs import atomic_path, oodml_home
from ..distributed import barrier, is_main_process
from ..progress import progress
from ..seeding import rng_for
from .base import ImageDataset
from .imagefolder import scan_class_folders
from .registry import register_dataset

GENERATOR_VERSION = "1"
SIZE = 32             # output side in pixels
SUPERSAMPLE = 4       # render at SIZE * SUPERSAMPLE, then area-average down
FONT_PX = 76          # font size at the supersampled resolution
BASELINE = 0.74       # baseline height as a fraction of the canvas, from the top
VARIANTS = 2          # jittered images per (character, font)
HOMOGLYPH_DISTANCE = 0.1  # see module docstring, rule 2

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


@cache
def _font_path(filename: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / filename


@cache
def _font(filename: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_path(filename)), FONT_PX)


@cache
def _coverage(filename: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont  # ships with matplotlib

    return frozenset(TTFont(str(_font_path(filename)), lazy=True).getBestCmap())


def render(char: str, font_file: str, variant: int | None = None) -> Image.Image:
    """Draw ``char`` in ``font_file`` as a ``SIZE`` x ``SIZE`` greyscale image (ink dark on white).

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
    """Apply the coverage and homoglyph rules of the module docstring; return the kept classes in order."""
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


def _cache_key() -> str:
    import matplotlib
    import PIL
    from PIL import features

    spec = {"generator": GENERATOR_VERSION, "pillow": PIL.__version__, "freetype": features.version("freetype2"),
            "matplotlib": matplotlib.__version__, "fonts": FONT_FILES, "groups": GROUPS,
            "render": [SIZE, SUPERSAMPLE, FONT_PX, BASELINE, VARIANTS, HOMOGLYPH_DISTANCE]}
    return f"v{GENERATOR_VERSION}-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def generate(out: Path, classes: list[GlyphClass] | None = None) -> list[GlyphClass]:
    """Render the dataset into ``out`` (which must not exist) as ``<U+XXXX>/<font>-<variant>.png``.

    Also writes ``classes.json`` (folder, name, character, group per class).
    Returns the classes written.
    """
    classes = select_characters() if classes is None else classes
    out.mkdir(parents=True)
    for g in progress(classes, "render glyphs", unit="class"):
        (out / g.folder).mkdir()
        for font_file in FONT_FILES:
            stem = font_file.removesuffix(".ttf")
            for v in range(VARIANTS):
                render(g.char, font_file, v).save(out / g.folder / f"{stem}-{v}.png", optimize=False)
    meta = [{"folder": g.folder, "name": g.name, "char": g.char, "group": g.group} for g in classes]
    (out / "classes.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return classes


def cache_dir() -> Path:
    """Where the current generator's images are cached."""
    return oodml_home() / "glyphs" / _cache_key()


@register_dataset("glyphs", description="embedded: Unicode characters rendered from matplotlib's fonts, "
                  "no download (generated once, then cached)", layout="generated under $OODML_HOME/glyphs",
                  needs_root=False, split_extractor="pixels")
def load_glyphs(root: Path | None = None) -> ImageDataset:
    """Load (generating on first use) the glyphs dataset; ``root`` overrides the cache directory."""
    base = cache_dir() if root is None else Path(root)
    if not (base / "classes.json").exists() and is_main_process():
        with atomic_path(base) as tmp:
            generate(tmp)
    barrier()  # under torchrun, rank 0 generates and the others wait for it
    meta = json.loads((base / "classes.json").read_text(encoding="utf-8"))
    sample_ids, labels, folders = scan_class_folders(base, "glyphs")
    by_folder = {m["folder"]: m for m in meta}
    return ImageDataset(
        name="glyphs", root=base, layout="generated glyph folders <U+XXXX>/<font>-<variant>.png",
        sample_ids=sample_ids, labels=labels, classes=[by_folder[f]["name"] for f in folders],
        metadata={"group": np.array([by_folder[folders[k]]["group"] for k in labels])},
    )
