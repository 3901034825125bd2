"""Audit ``glyphs@v1`` under three extractors that work offline (issue 15), and make the trained one.

1. ``pixels``: the split set's own features (tau = 1 by construction; the interval shows how far class
   resampling alone moves the order).
2. ``timm:resnet18?pretrained=false,seed=0,size=64``: a randomly initialised ResNet-18, fixed seed, glyphs
   upsampled to 64x64.
3. A trained ``glyph-cnn`` whose training classes are disjoint from every glyphs class: characters the
   glyphs renderer did not select (accented Latin letters, Latin Extended, further Cyrillic, arrows and
   mathematical operators), drawn by ``tools/render_glyphs.py``'s own renderer in the same 16 fonts, minus any
   character that is a homoglyph (the renderer's rule 2) of a glyphs class.  No level's train or test class was
   seen in training, so the extractor cannot favour either side of any level; it still knows the *domain*
   (printed characters), as an ImageNet network knows photographs.  Training on glyphs classes instead would
   bias the audit: on a level's train classes it is tuned to one side of that level only, and on all classes it
   has seen every test class too (and, trained long, pushes all class means to equal distances, flattening the
   levels).

Run (about 5-10 minutes on 2 cores)::

    .venv/bin/python tools/audit_glyphs.py [--work build/audit-glyphs] [--store [--replace]]

It prints the audit table and writes ``audit.json`` and ``audit.png`` into ``WORK/audit``; with ``--store``
it also keeps the audits in ``splits/glyphs/v1/audits/`` (the digest does not change), replacing the
published ones only with ``--replace``.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_glyphs as rg  # noqa: E402

from oodml.datasets import DataConfig, load_dataset  # noqa: E402
from oodml.splits import FeatureConfig, SplitConfig, load, make_splits  # noqa: E402
from oodml.splits.audit import audit, format_audit, store_audit, write_audit  # noqa: E402
from oodml.training import TrainConfig, train  # noqa: E402

#: candidate code points for the disjoint training characters, in this order
RANGES = ((0xC0, 0x24F), (0x460, 0x4FF), (0x2190, 0x21FF), (0x2200, 0x22FF))
CLASSES = 200
RANDOM_RESNET = "timm:resnet18?pretrained=false,seed=0,size=64"


def disjoint_characters(count: int = CLASSES) -> list[rg.GlyphClass]:
    """The first ``count`` characters of :data:`RANGES` that every font covers, that carry ink, that are not glyphs
    classes and that are no homoglyph (relative distance below 0.1 in some font) of a glyphs class."""
    covered = frozenset.intersection(*(rg._coverage(f) for f in rg.FONT_FILES))
    taken = {g.char for g in rg.select_characters()}
    candidates = [rg.GlyphClass(chr(c), "disjoint") for lo, hi in RANGES for c in range(lo, hi + 1)
                  if c in covered and chr(c) not in taken and unicodedata.category(chr(c))[0] in "LNPS"]

    def ink(chars: list[str]) -> np.ndarray:  # (fonts, chars, pixels), ink 1.0
        return np.stack([np.stack([1.0 - np.asarray(rg.render(c, f), np.float64).ravel() / 255.0 for c in chars])
                         for f in rg.FONT_FILES])

    glyph_ink, cand_ink = ink(sorted(taken)), ink([g.char for g in candidates])
    sq_g, sq_c = (glyph_ink ** 2).sum(2), (cand_ink ** 2).sum(2)
    d2 = sq_c[:, :, None] + sq_g[:, None, :] - 2 * np.einsum("fcp,fgp->fcg", cand_ink, glyph_ink)
    relative = np.sqrt(np.maximum(d2, 0) / np.maximum((sq_c[:, :, None] + sq_g[:, None, :]) / 2, 1e-12))
    keep = (sq_c.sum(0) > 0) & (relative.min(axis=(0, 2)) >= rg.HOMOGLYPH_DISTANCE)
    return [g for g, k in zip(candidates, keep, strict=True) if k][:count]


def trained_extractor(work: Path) -> Path:
    """Render the disjoint characters, train a glyph-cnn on them (seed 0), return its checkpoint."""
    checkpoint = work / "disjoint-glyph-cnn" / "level1.pt"
    if checkpoint.exists():
        return checkpoint
    folders = work / "glyphs-disjoint"
    if not folders.exists():
        chars = disjoint_characters()
        print(f"training characters: {len(chars)}, e.g. {''.join(g.char for g in chars[:20])}")
        rg.write_folders(folders, rg.render_dataset(chars))
    ds = load_dataset("glyphs", root=folders)
    # A split set over the disjoint characters only serves train()'s interface: level 1's tuning-train classes
    # are trained on, its validation classes select the checkpoint.
    split_set = make_splits("glyphs", data=DataConfig(root=folders), features=FeatureConfig(extractor="pixels"),
                            version="disjoint", out=work / "splits",
                            config=SplitConfig(levels=2, removal_levels=0, bootstrap=0, episodes=0, shots=(1,)))
    config = TrainConfig(arch="glyph-cnn", iterations=200, eval_every=100, seed=0)
    train(ds, split_set, 1, config, out=checkpoint.parent)
    return checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("build/audit-glyphs"))
    parser.add_argument("--store", action="store_true", help="keep the audits in splits/glyphs/v1/audits/")
    parser.add_argument("--replace", action="store_true", help="with --store: replace the audits stored there")
    args = parser.parse_args(argv)
    checkpoint = trained_extractor(args.work)
    split_set = load("glyphs", "v1")
    result = audit(split_set, ["pixels", RANDOM_RESNET, str(checkpoint)])
    print(format_audit(result))
    for path in write_audit(result, args.work / "audit", replace=args.replace):
        print(f"wrote {path}")
    if args.store:
        for path in store_audit(result, split_set, replace=args.replace):
            print(f"stored {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
