"""Running the ``oodml`` command in the test's own process, and reading the one line a failure prints."""

from __future__ import annotations

import contextlib
import io

from oodml.cli import main


def run(*argv: str) -> tuple[int, list[str]]:
    """``oodml -q ARGV`` in this process: (exit status, stderr lines); argparse's SystemExit becomes a status."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(["-q", *argv])
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue().splitlines()


def one_line_error(code: int, lines: list[str]) -> str:
    """The single line a failed command prints (usage errors too: no usage block, a pointer to --help)."""
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("oodml: error: "), lines
    return lines[0]
