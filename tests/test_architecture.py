"""The layers of the package (README, Architecture): imports point down, never up.

Every module belongs to one layer; a module may import its own layer and the
layers below it. A library module importing the trainer or an app fails here.
"""

import ast
from pathlib import Path

import speedrun

PACKAGE = Path(speedrun.__file__).parent

# lowest first; a name ending in "." is a package prefix
LAYERS = [
    ("foundation", ["config", "device", "clock", "checkpoint", "tokenizer", "data", "data.", "flops",
                    "distributed", "model", "optim", "progress", "rundir", "metrics_log", "compilation", "step",
                    "plan"]),
    ("tasks and conversations", ["tasks", "tasks.", "chat", "chat.template", "chat.items", "chat.conversations",
                                 "chat.identity", "chat.user_conversations",
                                 "chat.calculator", "chat.engine", "chat.evaluate", "chat.corpus"]),
    ("trainer", ["trainer", "run"]),
    ("apps", ["apps", "apps.", "report", "verify", "verify_chat", "export", "export.", "loading", "cli", "__main__",
              "__init__"]),
]


def layer_of(module: str) -> int:
    matches = [(len(name), i) for i, (_, names) in enumerate(LAYERS) for name in names
               if module == name or (name.endswith(".") and module.startswith(name))]
    assert matches, f"speedrun.{module} belongs to no layer: add it to LAYERS and to the README's Architecture"
    return max(matches)[1]


def imports(module: str, source: str, is_package: bool = False) -> set[str]:
    """Every speedrun module `source` (the text of speedrun.<module>) imports, at any depth
    (function-level imports included)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                if node.module:
                    found.add(".".join(base + [node.module]))
                else:
                    found.update(".".join(base + [a.name]) for a in node.names)
            elif (node.module or "").startswith("speedrun."):
                found.add(node.module.removeprefix("speedrun."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("speedrun.") for a in node.names if a.name.startswith("speedrun."))
    return {name for name in found if name}


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    return [f"speedrun.{module} ({LAYERS[layer_of(module)][0]}) imports speedrun.{target} "
            f"({LAYERS[layer_of(target)][0]})"
            for target in sorted(imports(module, source, is_package)) if layer_of(target) > layer_of(module)]


def test_imports_point_down():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        is_package = parts[-1] == "__init__" and len(parts) > 1
        module = ".".join(parts[:-1] if is_package else parts)
        upward += upward_imports(module, path.read_text(encoding="utf-8"), is_package)
    assert not upward, "\n".join(upward)


def test_an_upward_import_is_caught():
    source = "from ..config import Config\n\ndef f():\n    from ..trainer import Trainer\n"
    assert upward_imports("tasks.addition", source) == [
        "speedrun.tasks.addition (tasks and conversations) imports speedrun.trainer (trainer)"]
    assert upward_imports("trainer", "from .tasks import build_task\n") == []
