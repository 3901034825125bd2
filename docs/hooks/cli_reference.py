"""mkdocs hook: the command-line reference, generated from oodml's own argparse parser at build time.

``docs/reference/cli.md`` holds the marker ``<!-- oodml-cli-reference -->``; this hook replaces it with one
section per command and subcommand (the help line it has in its parent's listing, then its ``--help`` text at a
fixed width), so the reference is whatever ``oodml.cli.build_parser()`` builds today and cannot drift from it.
A page that lacks the marker fails the build.
"""

from __future__ import annotations

import argparse
import functools

MARKER = "<!-- oodml-cli-reference -->"
PAGE = "reference/cli.md"
WIDTH = 100          # columns of the help text: fixed, so the page does not depend on the builder's terminal


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


def on_page_markdown(markdown: str, page, config, files) -> str:
    """mkdocs event: fill the marker on the CLI reference page."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{PAGE} lost its marker {MARKER}: the CLI reference would not be generated")
    return markdown.replace(MARKER, cli_reference_markdown())
