"""List the functions in oodml/ longer than a limit (issue 16: none over 60 lines); exit 1 when there are any.

`make test` runs it (tests/test_architecture.py).  Usage: python tools/long_functions.py [--limit 60] [PATH ...]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def long_functions(paths: list[Path], limit: int) -> list[tuple[int, str]]:
    """``(lines, "file:line name")`` for every function or method over ``limit`` lines, longest first."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append((length, f"{path}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def main(argv: list[str] | None = None) -> int:
    """Print ``lines  file:line name`` per function over the limit; returns 1 when there is one, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("oodml")])
    parser.add_argument("--limit", type=int, default=60)
    args = parser.parse_args(argv)
    files = [f for p in args.paths for f in (sorted(p.rglob("*.py")) if p.is_dir() else [p])]
    found = long_functions(files, args.limit)
    for length, where in found:
        print(f"{length:4d}  {where}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
