"""mkdocs hook: the reference pages generated from oodml itself at build time, so they cannot drift from it.

Each page holds a marker that this hook replaces (:data:`PAGES`); a page that lacks its marker fails the build.

* ``docs/reference/cli.md``, ``<!-- oodml-cli-reference -->``: one section per command and subcommand (the help
  line it has in its parent's listing, then its ``--help`` text at a fixed width), from
  ``oodml.cli.build_parser()``.
* ``docs/reference/names.md``, ``<!-- oodml-registries -->``: one table per registry, ``Registry.listing()`` as
  ``oodml models list`` and ``oodml datasets list`` print it.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

WIDTH = 100          # columns of the help text: fixed, so the page does not depend on the builder's terminal


# --- the CLI reference -------------------------------------------------------------------------------------

def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help line, parser)`` of each direct subcommand of ``parser``, in the order they were added."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def _help_text(parser: argparse.ArgumentParser) -> str:
    """``parser.format_help()`` as at a terminal ``WIDTH`` columns wide."""
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=WIDTH, max_help_position=34)
    return parser.format_help().rstrip()


def command_sections(parser: argparse.ArgumentParser, summary: str = "", depth: int = 2) -> list[str]:
    """Markdown for ``parser`` and, below it, every subcommand, depth first (heading level ``depth``, at most 4)."""
    name = parser.prog
    anchor = name.replace(" ", "-")
    lines = [f"{'#' * min(depth, 4)} {name} {{#{anchor}}}", ""]
    if summary:
        lines += [summary[0].upper() + summary[1:] + ".", ""]
    lines += ["```text", _help_text(parser), "```", ""]
    for _, help_line, sub in _subcommands(parser):
        lines += command_sections(sub, help_line, depth + 1)
    return lines


def cli_reference_markdown() -> str:
    """The whole generated reference: every command of ``oodml`` with its usage, arguments and help."""
    from oodml.cli import build_parser

    return "\n".join(command_sections(build_parser()))


# --- the names users pick (models, datasets, extractors, losses, ...), from the registries -----------------

def registries() -> list[tuple[str, str, object]]:
    """``(title, where users pick it, registry)`` for every registry of oodml, in reading order."""
    from oodml.adapt import ADAPTATIONS
    from oodml.augmentations import AUGMENTATIONS
    from oodml.datasets.registry import DATASETS
    from oodml.features import EXTRACTORS
    from oodml.losses import LOSSES, REGULARISERS
    from oodml.models.recipes import RECIPES
    from oodml.models.registry import MODELS
    from oodml.models.sources import SOURCES
    from oodml.shift import DISTANCES
    from oodml.splits.build import ALGORITHMS

    return [
        ("Datasets", "`--dataset`, `load_dataset(name)`", DATASETS),
        ("Models", "`oodml evaluate MODEL`, `train --arch`, `create_model(name)`", MODELS),
        ("Model sources", "a model spec's prefix, `SOURCE:REFERENCE` (`oodml.models.sources`)", SOURCES),
        ("Training recipes", "`train --arch` for what `--lr`, `--iterations`, `--embed-dim`, ... leave unset "
         "(`oodml.models.recipes`: a model's name, or `SOURCE:` for every spec of a library)", RECIPES),
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


#: page (relative to docs/) -> (its marker, the Markdown that replaces it)
PAGES: dict[str, tuple[str, Callable[[], str]]] = {
    "reference/cli.md": ("<!-- oodml-cli-reference -->", cli_reference_markdown),
    "reference/names.md": ("<!-- oodml-registries -->", registries_markdown),
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """mkdocs event: fill the marker of a generated page."""
    if page.file.src_uri not in PAGES:
        return markdown
    marker, generate = PAGES[page.file.src_uri]
    if marker not in markdown:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{page.file.src_uri} lost its marker {marker}: the page would not be generated")
    return markdown.replace(marker, generate())
