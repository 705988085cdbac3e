"""The package's shape, checked from its source so it stays true: imports only run downward
(ARCHITECTURE.md's floors) and the submission tools never load the trainer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cellseg_d2"

#: What each part of the package may import of the package (besides itself): the floors of
#: ARCHITECTURE.md. Rooms on one floor (data | modeling, engine | inference) do not import each
#: other; the training-time evaluator reaches the engine through evaluation/.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "utils": {"errors"},
    "config": {"errors", "utils"},
    "checkpoint": {"errors", "utils", "config"},
    "data": {"errors", "utils", "config"},
    "modeling": {"errors", "utils", "config"},
    "evaluation": {"errors", "utils", "config", "checkpoint", "data", "modeling"},
    "engine": {"errors", "utils", "config", "checkpoint", "data", "modeling", "evaluation"},
    "inference": {"errors", "utils", "config", "checkpoint", "data", "modeling", "evaluation"},
    "benchmark": {
        "errors",
        "utils",
        "config",
        "checkpoint",
        "data",
        "modeling",
        "evaluation",
        "engine",
        "inference",
    },
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _part(path: Path) -> str:
    """The floor a module belongs to: its first folder under the package, or its own stem."""
    relative = path.relative_to(PACKAGE).parts
    return relative[0] if len(relative) > 1 else Path(relative[0]).stem


def _imported_parts(path: Path) -> set[tuple[str, int]]:
    """(part, line) of every cellseg_d2 import in the module, at any depth (lazy ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import (use absolute ones)"
            names = [node.module or ""]
            if node.module == "cellseg_d2":  # submodules only; __version__ is no floor
                names = [
                    f"cellseg_d2.{alias.name}"
                    for alias in node.names
                    if (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").is_file()
                ]
        for name in names:
            parts = name.split(".")
            if parts[0] == "cellseg_d2" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def test_imports_only_run_downward() -> None:
    problems = []
    for path in _modules():
        if path == PACKAGE / "__init__.py":
            continue  # registers the model components (imports modeling only)
        part = _part(path)
        assert part in ALLOWED, f"{path}: not in a known floor; add it to ALLOWED"
        for imported, line in _imported_parts(path):
            if imported != part and imported not in ALLOWED[part]:
                problems.append(f"{path.relative_to(REPO)}:{line}: {part} imports {imported}")
    assert not problems, "\n".join(problems)


def test_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The parser sees a lazy import inside a function (the kind that hid the old circle)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from cellseg_d2.inference import predict\n")
    assert ("inference", 2) in _imported_parts(module)


@pytest.mark.parametrize("tool", ["validate_submission.py", "evaluate_submission.py"])
def test_submission_tools_do_not_load_the_trainer(tool: str) -> None:
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{tool!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / 'tools' / tool)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('ENGINE' if 'detectron2.engine' in sys.modules or 'cellseg_d2.engine' in "
        "sys.modules else 'CLEAN')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("CLEAN"), proc.stdout[-500:]
