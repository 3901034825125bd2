"""mkdocs hook: the names users pick (models, datasets, extractors, losses, ...), listed from oodml's registries.

``docs/reference/names.md`` holds the marker ``<!-- oodml-registries -->``; this hook replaces it with one
table per registry, ``Registry.listing()`` as ``oodml models list`` and ``oodml datasets list`` print it, so
the page is whatever is registered today.  A page that lacks the marker fails the build.
"""

from __future__ import annotations

MARKER = "<!-- oodml-registries -->"
PAGE = "reference/names.md"


def registries() -> list[tuple[str, str, object]]:
    """``(title, where users pick it, registry)`` for every registry of oodml, in reading order."""
    from oodml.adapt import ADAPTATIONS
    from oodml.augmentations import AUGMENTATIONS
    from oodml.datasets.registry import DATASETS
    from oodml.features import EXTRACTORS
    from oodml.losses import LOSSES, REGULARISERS
    from oodml.models.registry import MODELS
    from oodml.shift import DISTANCES
    from oodml.splits.build import ALGORITHMS

    return [
        ("Datasets", "`--dataset`, `load_dataset(name)`", DATASETS),
        ("Models", "`oodml evaluate MODEL`, `train --arch`, `create_model(name)`", MODELS),
        ("Feature extractors", "`make-splits --extractor`, `splits audit --extractor`", EXTRACTORS),
        ("Distances", "`make-splits --distance`", DISTANCES),
        ("Search algorithms", "`make-splits --algorithm`", ALGORITHMS),
        ("Losses", "`train --loss`", LOSSES),
        ("Regularisers", "`train --sec` / `--l2-reg`", REGULARISERS),
        ("Augmentations", "a model's `augmentation`", AUGMENTATIONS),
        ("Few-shot adaptations", "`evaluate --adapt`", ADAPTATIONS),
    ]


def registries_markdown() -> str:
    """One section per registry: where the name is given, then a name / description table."""
    lines = []
    for title, where, registry in registries():
        lines += [f"## {title}", "", f"Picked with {where}.", "", "| name | what it is |", "| --- | --- |"]
        lines += [f"| `{name}` | {description.replace('|', '/')} |" for name, description in registry.listing()]
        lines.append("")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """mkdocs event: fill the marker on the names page."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{PAGE} lacks the marker {MARKER}")
    return markdown.replace(MARKER, registries_markdown())
