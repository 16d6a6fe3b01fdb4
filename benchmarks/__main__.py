"""`python -m benchmarks NAME [args]` runs benchmark NAME; with no name, or --list, lists them."""

from __future__ import annotations

import importlib
import sys

from benchmarks import catalogue
from benchmarks.common import PROG


def main() -> int:
    found = catalogue()
    if len(sys.argv) < 2 or sys.argv[1] in ("--list", "-h", "--help"):
        print(f"usage: {PROG} NAME [args]   ({PROG} NAME --help for a benchmark's arguments)\n")
        width = max(map(len, found))
        print("\n".join(f"  {name:<{width}}  {line}" for name, line in found.items()))
        return 0
    name = sys.argv[1]
    if name not in found:
        print(f"error: no benchmark {name!r}; {PROG} --list names them: {', '.join(found)}", file=sys.stderr)
        return 2
    sys.argv = [f"{PROG} {name}", *sys.argv[2:]]  # the benchmark's --help names it so
    return importlib.import_module(f"benchmarks.{name}").main() or 0


if __name__ == "__main__":
    sys.exit(main())
