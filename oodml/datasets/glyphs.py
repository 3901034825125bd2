"""``glyphs``: the embedded dataset, Unicode characters drawn in 16 fonts, shipped inside oodml as PNG bytes.

Each class is one Unicode character; each image is that character drawn in one
of 16 fonts (DejaVu Sans, Serif and Sans Mono, and STIX General, each regular,
bold, italic and bold italic) with a deterministic small affine jitter and
stroke-weight change.  Characters come in script groups (Latin, digits, Greek,
Cyrillic, IPA, box drawing, punctuation and symbols), so class structure has
natural clusters that a distribution shift can separate.

Rules the renderer applied, in this order:

1. *Coverage*: a character is a candidate only if all 16 fonts have it in their
   character map (no fallback boxes), and it renders with visible ink.
2. *Homoglyphs*: candidates are visited in script-group order; a character is
   dropped when, in at least one font, its clean rendering at the dataset
   resolution is within a relative distance of 0.1 of a character already
   kept, where the relative distance of renderings a, b (ink intensities in
   [0, 1]) is ||a - b|| / sqrt((||a||^2 + ||b||^2) / 2).  So Latin ``A`` stays
   and Greek Alpha and Cyrillic A go: identical images under two labels would
   make retrieval scores meaningless.  The threshold sits in a wide gap of the
   measured distances: 64 pairs are pixel-identical, two more are nearly so
   (Greek Phi / Cyrillic Ef 0.05, Greek pi / Cyrillic pe in DejaVu Serif Bold
   0.056), and the next closest pair, g / IPA script g, is at 0.11 and clearly
   different.

The result: 330 classes x 16 fonts x 2 variants = 10,560 images, each a 32x32
greyscale PNG (dark ink on white) returned as RGB like every other dataset.

*Why shipped bytes.*  Rendered pixels depend on the installed FreeType, Pillow
and fonts, and the published split sets pin the dataset fingerprint (sample
ids, class names and file sizes), so images rendered on another machine would
be refused by ``splits/glyphs/v1``.  The images were therefore rendered once,
by ``tools/render_glyphs.py`` (Pillow 13.0.0, FreeType 2.14.3, matplotlib
3.11.2's fonts), and ship as bytes in ``oodml/datasets/data/glyphs.parquet``:
1,923,562 bytes added to the wheel (2,609,216 bytes of PNG, zstd-compressed
Parquet).  Loading checks the file's sha256 against :data:`DATA_SHA256` and
decodes images from memory; it renders nothing, writes nothing and needs
neither matplotlib nor FreeType.

*Regenerating* (``python tools/render_glyphs.py``, see its docstring) rewrites
the data file and prints its sha256 for :data:`DATA_SHA256`.  New renderings
almost always change the fingerprint, and split sets made from the old bytes
then refuse the data: a regenerated file needs a new split set version
(``oodml make-splits glyphs --version v2``).

``load_dataset("glyphs", root=DIR)`` instead reads images from files:
``DIR/<U+XXXX>/<font>-<variant>.png`` plus ``DIR/classes.json``, the folders
``tools/render_glyphs.py --folders DIR`` writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import OodmlError
from .base import ImageDataset, decode_image
from .imagefolder import scan_class_folders
from .registry import register_dataset

SIZE = 32  # image side in pixels
DATA_FILE = Path(__file__).parent / "data" / "glyphs.parquet"
#: sha256 (hex) of ``DATA_FILE``; ``tools/render_glyphs.py`` prints the value for a regenerated file.
DATA_SHA256 = "0a8dc9d6f2cb163702964dc86ba9764c3e5446bc0a0d5806725e1e7e7441d365"
#: Split sets record this as ``dataset_layout`` and hash it into their digest: changing it
#: would stop ``make-splits glyphs`` from reproducing the published ``glyphs@v1``.
LAYOUT = "generated glyph folders <U+XXXX>/<font>-<variant>.png"


@dataclass(eq=False, repr=False)
class EmbeddedImageDataset(ImageDataset):
    """An :class:`ImageDataset` whose image files are held in memory rather than on disk.

    Attributes:
        encoded: the file bytes (here PNG) of each sample, in sample order;
            ``root`` names the data file they were read from.
    """

    encoded: Sequence[bytes] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.encoded) != len(self.sample_ids):
            raise ValueError(f"{len(self.encoded)} encoded images for {len(self.sample_ids)} sample ids")

    def path(self, index: int) -> Path:
        raise OodmlError(f"{self.name}: sample {self.sample_ids[index]!r} is not a file; its bytes are held "
                         f"in memory (read from {self.root}), use load_image")

    def load_image(self, index: int) -> Image.Image:
        return decode_image(self.encoded[index], self.name, f"sample {self.sample_ids[index]!r} from {self.root}")

    def sample_size(self, index: int) -> int:
        """Size of the sample's encoded file in bytes, as on disk."""
        return len(self.encoded[index])


def read_data_file(path: Path, sha256: str) -> EmbeddedImageDataset:
    """The dataset stored in the Parquet file ``path`` (columns ``sample_id``, ``class_name``,
    ``group``, ``png``; one row per image in dataset order), after checking its sha256.

    Raises:
        OodmlError: when the file is missing or its sha256 is not ``sha256``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    reinstall = "reinstall oodml (pip install --force-reinstall oodml, or git checkout the file in a clone)"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise OodmlError(f"glyphs: the data file {path} is missing; {reinstall}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise OodmlError(f"glyphs: the data file {path} is damaged (sha256 {actual[:16]}, expected "
                         f"{sha256[:16]}); {reinstall}")
    table = pq.read_table(pa.BufferReader(data))
    names = table.column("class_name").to_pylist()
    classes = list(dict.fromkeys(names))  # rows come class by class, in folder order
    index = {c: k for k, c in enumerate(classes)}
    return EmbeddedImageDataset(
        name="glyphs", root=path, layout=LAYOUT, sample_ids=table.column("sample_id").to_pylist(),
        labels=np.array([index[c] for c in names], dtype=np.int64), classes=classes,
        metadata={"group": np.array(table.column("group").to_pylist())},
        encoded=table.column("png").to_pylist(),
    )


def read_folders(base: Path) -> ImageDataset:
    """The dataset as ``base/<U+XXXX>/<font>-<variant>.png`` files plus ``base/classes.json``.

    Raises:
        OodmlError: when ``classes.json`` is missing or malformed, or does not list a class folder.
    """
    listing = base / "classes.json"
    try:
        by_folder = {m["folder"]: (m["name"], m["group"]) for m in json.loads(listing.read_text(encoding="utf-8"))}
    except (FileNotFoundError, NotADirectoryError):
        raise OodmlError(f"glyphs: {base} has no classes.json; a root must hold the folders "
                         "`python tools/render_glyphs.py --folders DIR` writes (leave out the root "
                         "to use the images shipped with oodml)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise OodmlError(f"glyphs: {listing} is malformed ({type(exc).__name__}: {exc}); expected a JSON list of "
                         "{folder, name, group} objects, as tools/render_glyphs.py --folders writes") from None
    sample_ids, labels, folders = scan_class_folders(base, "glyphs")
    unlisted = [f for f in folders if f not in by_folder]
    if unlisted:
        raise OodmlError(f"glyphs: class folder {base / unlisted[0]} is not listed in {listing}")
    return ImageDataset(
        name="glyphs", root=base, layout=LAYOUT, sample_ids=sample_ids, labels=labels,
        classes=[by_folder[f][0] for f in folders],
        metadata={"group": np.array([by_folder[folders[k]][1] for k in labels])},
    )


@register_dataset("glyphs", description="embedded: 330 Unicode characters in 16 fonts, 10,560 32x32 PNGs "
                  "shipped inside oodml (no download)",
                  layout=f"{LAYOUT} with classes.json, as tools/render_glyphs.py --folders DIR writes them "
                  "(without a root: the images shipped inside oodml)", needs_root=False, split_extractor="pixels")
def load_glyphs(root: Path | None = None) -> ImageDataset:
    """The glyphs dataset: the shipped images (checked against :data:`DATA_SHA256`), or with ``root``
    the rendered glyph folders under it (see the module docstring)."""
    return read_data_file(DATA_FILE, DATA_SHA256) if root is None else read_folders(Path(root))
