"""The package's shape, checked from its source so it stays true: imports only run downward
(ARCHITECTURE.md's floors) and the submission tools never load the trainer."""

from __future__ import annotations

import ast
import re
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


# ---- tests mirror the package; modules stay small; no test reads YAML unsafely --------------

TESTS = REPO / "tests"
#: The longest a package module may grow before it is split.
MAX_MODULE_LINES = 400
#: Tests that call detectron2's ``merge_from_file`` on purpose, as a control. Everything else
#: reads configs with ``cellseg_d2.config.load_cellseg_config`` (or ``merge_config_file``),
#: which never runs code from a YAML file.
UNSAFE_MERGE_ALLOWED: dict[tuple[str, str], str] = {
    ("tests/config/test_loader.py", "test_detectron2_merge_from_file_would_run_the_payload"): (
        "proves the payload is real: detectron2's loader runs it, ours refuses it"
    ),
    ("tests/config/test_loader.py", "test_shipped_configs_load_as_detectron2_loads_them"): (
        "the reference the safe loader must equal on every shipped config"
    ),
}
_UNSAFE_MERGE = re.compile(r"\.merge_from_file\(")


def _expected_test_file(module: Path) -> Path:
    """``cellseg_d2/a/b.py`` -> ``tests/a/test_b.py`` (``cellseg_d2/errors.py`` ->
    ``tests/test_errors.py``)."""
    relative = module.relative_to(PACKAGE)
    return TESTS / relative.parent / f"test_{relative.name}"


def _unsafe_merges(path: Path) -> list[tuple[str, int]]:
    """``(function, line)`` of every call of detectron2's file merge in a file, in code or in a
    string (code run in a subprocess); the function is the outermost one around the line."""
    text = path.read_text(encoding="utf-8")
    functions = [
        node
        for node in ast.parse(text).body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    ]
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if _UNSAFE_MERGE.search(line):
            owner = next(
                (f.name for f in functions if f.lineno <= number <= f.end_lineno), "<module>"
            )
            found.append((owner, number))
    return found


def test_every_module_has_its_test_file() -> None:
    missing = [
        f"{module.relative_to(REPO)} -> {_expected_test_file(module).relative_to(REPO)}"
        for module in _modules()
        if module.name != "__init__.py" and not _expected_test_file(module).is_file()
    ]
    assert not missing, "modules without their own test file:\n" + "\n".join(missing)


def test_test_file_mapping() -> None:
    assert _expected_test_file(PACKAGE / "errors.py") == TESTS / "test_errors.py"
    assert _expected_test_file(PACKAGE / "data" / "importers" / "raster.py") == (
        TESTS / "data" / "importers" / "test_raster.py"
    )


def test_modules_stay_small() -> None:
    long = []
    for module in _modules():
        lines = len(module.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            long.append(f"{module.relative_to(REPO)}: {lines} lines")
    assert not long, f"modules above {MAX_MODULE_LINES} lines (split them):\n" + "\n".join(long)


def test_no_test_uses_the_unsafe_yaml_merge() -> None:
    found = [
        (str(path.relative_to(REPO)), function, line)
        for path in sorted(TESTS.rglob("*.py"))
        for function, line in _unsafe_merges(path)
    ]
    unexpected = [
        f"{file}:{line} in {function}"
        for file, function, line in found
        if (file, function) not in UNSAFE_MERGE_ALLOWED
    ]
    assert not unexpected, (
        "use cellseg_d2.config.load_cellseg_config (it never runs code from YAML):\n"
        + "\n".join(unexpected)
    )
    # Every allowed control still exists and still calls detectron2's loader (else drop it).
    for file, function in UNSAFE_MERGE_ALLOWED:
        assert (REPO / file).is_file(), file
        assert any(f[:2] == (file, function) for f in found), (
            f"{file}::{function} no longer calls it; remove it from UNSAFE_MERGE_ALLOWED"
        )


def test_unsafe_merge_scan_sees_calls_and_code_in_strings(tmp_path: Path) -> None:
    merge = "merge_from_file"  # spelled apart so that this file holds no such call
    module = tmp_path / "test_x.py"
    module.write_text(
        "def test_a(cfg):\n"
        f"    cfg.{merge}('a.yaml')\n"
        "\n"
        "def test_b():\n"
        f"    code = 'cfg.{merge}(path)'\n"
        "\n"
        "def test_c(cfg):\n"
        "    cfg.merge_from_list(['A', 1])\n"
        f"    cfg.{merge}  # mentioned, not called\n"
    )
    assert _unsafe_merges(module) == [("test_a", 2), ("test_b", 5)]
