"""The default pretraining corpus: English prose that ships with Python itself.

Two sources, both in every CPython install, so the pipeline runs offline on a
fresh machine: the help topics of the language reference (`pydoc_data.topics`,
about 0.5 MB) and the longer docstrings of the standard library's modules,
classes and functions (about 1.2 MB; test suites and IDLE left out). It is
small and about programming, so the base model is weak at general English;
`--data` gives the pipeline a better corpus.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}
MIN_DOCSTRING_CHARS = 200  # shorter ones are mostly one-line summaries


def python_docs() -> list[str]:
    """Documents (one help topic or docstring each), in a fixed order."""
    from pydoc_data.topics import topics

    docs = [topics[name].strip() for name in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in SKIP_PARTS or p.startswith("test_") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                    docs.append(doc)
    return docs
