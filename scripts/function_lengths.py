"""List functions longer than a limit (default 60 lines), longest first; exit 1 if there are any.

    python scripts/function_lengths.py [--max-lines N] [DIR ...]   (default DIR: streamclf)

A long function is usually several named steps waiting to be extracted; scripts/test.sh runs this
on streamclf/ with the default limit. Lines count from ``def`` to the last line of the body,
decorators excluded.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def long_functions(root: Path, max_lines: int) -> list[tuple[int, str]]:
    """(lines, "path:line name") of every function in ``root`` longer than ``max_lines``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > max_lines:
                    found.append((lines, f"{path}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-lines", type=int, default=60)
    parser.add_argument("dirs", nargs="*", type=Path, default=[Path("streamclf")])
    args = parser.parse_args()
    found = [row for d in args.dirs for row in long_functions(d, args.max_lines)]
    for lines, where in found:
        print(f"{where}: {lines} lines (more than {args.max_lines})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
