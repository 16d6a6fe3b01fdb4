"""speedrun's benchmarks, run by hand (minutes each, not in CI) from the repository root:

    python -m benchmarks                 # the list, one line each
    python -m benchmarks NAME [args]     # run one; NAME --help for its arguments

Each writes one JSON record (default results/NAME.json) through `common.write_record`, which
states the command, the commit, the machine and the caches; `python -m benchmarks report`
turns results/ into docs/results.md. A benchmark is a module here with a `main()`;
`common` and `timing` are what they share, `corpora` the held-out texts of `generalize`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def catalogue() -> dict[str, str]:
    """Every benchmark's name and the first line of its docstring, read without importing it
    (importing would load torch for each)."""
    found = {}
    for path in sorted(PACKAGE.glob("[!_]*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            found[path.stem] = (ast.get_docstring(tree) or "").splitlines()[0]
    return found
