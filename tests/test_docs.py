"""The docs stay true to the records: docs/results.md is what `python -m benchmarks report` makes of
results/, the README stays short, and every results/ path the README names exists."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_results_doc_is_generated_from_the_records():
    check = subprocess.run([sys.executable, "-m", "benchmarks", "report", "--check"], cwd=ROOT,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 260, f"README.md has {lines} lines; move details to docs/guide.md"


def test_readme_names_only_results_that_exist():
    named = set(re.findall(r"results/[\w./-]*[\w/]", README.read_text(encoding="utf-8")))
    assert named, "the README's headline table links no record"
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"README.md names results that do not exist: {missing}"
