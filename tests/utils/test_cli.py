"""The tools' shared pieces (cellseg_d2.utils.cli), and the promise they keep: a tool's first
screen is its own, without third-party warnings."""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellseg_d2.errors import CellDataError, ConfigError
from cellseg_d2.utils import cli
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES
from tests.conftest import INSTANT_CONFIG, REPO_ROOT

TOOLS = sorted((REPO_ROOT / "tools").glob("*.py"))
JIT_WARNING = (
    "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."
)
FX_RECORD = "is_fx_tracing will return true for both fx.symbolic_trace and torch.export."
FX_LOGGER = "torch.fx._symbolic_trace"
#: A line of a Python warning ("FutureWarning: ...") or of torch's own log format for warnings
#: ("W1202 13:05:04.206000 9101 torch/fx/_symbolic_trace.py:57] ...").
WARNING_LINE = re.compile(r"Warning|^[WE]\d{4} \d\d:\d\d", re.MULTILINE)


@pytest.fixture()
def restore_log_filters() -> Iterator[None]:
    """Undo what :func:`cli.quiet_third_party_warnings` did to the third-party loggers."""
    logger = logging.getLogger(FX_LOGGER)
    saved = logger.filters[:]
    yield
    logger.filters[:] = saved


def _warn(text: str, category: type[Warning]) -> None:
    warnings.warn(text, category, stacklevel=2)


def _bad_input(path: str) -> int:
    raise CellDataError(f"{path}: not a TIFF")


def test_exit_2_on_bad_input_prints_the_message(capsys: pytest.CaptureFixture) -> None:
    assert cli.exit_2_on_bad_input(_bad_input)("x.tif") == cli.EXIT_BAD_INPUT == 2
    captured = capsys.readouterr()
    assert captured.err == "error: x.tif: not a TIFF\n" and captured.out == ""

    @cli.exit_2_on_bad_input
    def bad_config() -> int:
        raise ConfigError("c.yaml: unknown key SOLVER.X")

    assert bad_config() == 2
    assert "error: c.yaml: unknown key SOLVER.X" in capsys.readouterr().err


def test_exit_2_on_bad_input_keeps_results_and_bugs() -> None:
    @cli.exit_2_on_bad_input
    def main(code: int) -> int:
        """Docstring kept."""
        if code < 0:
            raise ValueError("a bug, not bad input")
        return code

    assert main(0) == 0 and main(130) == 130
    assert main.__name__ == "main" and main.__doc__ == "Docstring kept."
    with pytest.raises(ValueError, match="a bug"):
        main(-1)
    with pytest.raises(KeyboardInterrupt):
        cli.exit_2_on_bad_input(_interrupt)()


def _interrupt() -> int:
    raise KeyboardInterrupt


def _parser(**kwargs: object) -> argparse.ArgumentParser:
    parser = cli.tool_parser("First paragraph.\n\nMore that --help leaves out.")
    cli.add_class_names_argument(parser, **kwargs)
    return parser


def test_class_names_argument_parses_checks_and_defaults(
    capsys: pytest.CaptureFixture,
) -> None:
    parser = _parser()
    assert parser.description == "First paragraph."
    assert parser.parse_args([]).class_names == DEFAULT_CLASS_NAMES
    assert parser.parse_args(["--class-names", "tumour, stroma"]).class_names == (
        "tumour",
        "stroma",
    )
    for bad in ("a,a", ""):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["--class-names", bad])
        assert info.value.code == 2
        assert "argument --class-names" in capsys.readouterr().err
    other = _parser(default=None, help_text="names (default: from the source)")
    assert other.parse_args([]).class_names is None
    assert "from the source" in other.format_help()


def test_dataset_arguments_refuse_a_negative_area(capsys: pytest.CaptureFixture) -> None:
    parser = cli.tool_parser(None)
    cli.add_dataset_arguments(parser, "somewhere")
    args = parser.parse_args(["--min-area", "0"])
    assert (args.root, args.min_area, args.class_names) == ("somewhere", 0, DEFAULT_CLASS_NAMES)
    for bad in ("-1", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--min-area", bad])
        assert "expected an integer >= 0" in capsys.readouterr().err


def test_flags_pass_the_named_values() -> None:
    args = argparse.Namespace(seed=3, overwrite=True, other="x")
    assert cli.flags(args, "seed", "overwrite") == {"seed": 3, "overwrite": True}
    with pytest.raises(AttributeError):
        cli.flags(args, "sed")


def test_quiet_hides_known_warnings_only(restore_log_filters: None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.quiet_third_party_warnings()
        cli.quiet_third_party_warnings()  # twice: no harm
        _warn(JIT_WARNING, FutureWarning)
        _warn("torch.meshgrid: in an upcoming release, it will be required", UserWarning)
        _warn("our own deprecation", FutureWarning)
        _warn(JIT_WARNING, UserWarning)  # known text, other category: shown
    assert [str(w.message) for w in caught] == ["our own deprecation", JIT_WARNING]


def test_quiet_drops_known_log_records_only(restore_log_filters: None) -> None:
    logger = logging.getLogger(FX_LOGGER)
    cli.quiet_third_party_warnings()
    cli.quiet_third_party_warnings()
    assert len(logger.filters) == 1
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.warning(FX_RECORD + " Please use is_fx_tracing_symbolic_tracing()")
        logger.warning("something else torch.fx says")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else torch.fx says"]


def test_import_warnings_hidden_only_while_the_block_runs() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before, show = warnings.filters[:], warnings.showwarning
        with cli.import_warnings_hidden():
            _warn(JIT_WARNING, FutureWarning)
            _warn("our own deprecation", FutureWarning)
            warnings.filterwarnings("ignore", "set by a module as it is imported")
        assert warnings.showwarning is show
        assert warnings.filters[1:] == before  # the module's filter stays, nothing else
        _warn(JIT_WARNING, FutureWarning)
    assert [str(w.message) for w in caught] == ["our own deprecation", JIT_WARNING]


def _env() -> dict[str, str]:
    """This checkout first on the path (the venv may hold another one), warnings shown."""
    env = dict(os.environ, PYTHONWARNINGS="default")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "default", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO_ROOT,
        timeout=timeout,
    )


def test_importing_the_package_filters_nothing() -> None:
    """No filter of ours, and torch's own import-time filters kept; user code still warned."""
    code = (
        "import logging, warnings\n"
        "import cellseg_d2, cellseg_d2.utils.cli, cellseg_d2.inference\n"
        "from torch.jit import TracerWarning\n"
        "assert warnings.showwarning is warnings._showwarning_orig\n"
        "patterns = {f[1].pattern for f in warnings.filters if f[1] is not None}\n"
        "assert not patterns & {p for p, _ in cellseg_d2.utils.cli._KNOWN_WARNINGS}, patterns\n"
        "assert any(f[2] is TracerWarning for f in warnings.filters), 'torch filter undone'\n"
        f"assert not logging.getLogger({FX_LOGGER!r}).filters\n"
        f"warnings.warn({JIT_WARNING!r}, FutureWarning)\n"
        f"logging.getLogger({FX_LOGGER!r}).warning({FX_RECORD!r})\n"
    )
    proc = _run("-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert JIT_WARNING in proc.stderr and FX_RECORD in proc.stderr


@pytest.mark.parametrize("tool", TOOLS, ids=[path.stem for path in TOOLS])
def test_tool_help_prints_no_warning(tool: Path) -> None:
    proc = _run(str(tool), "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
    output = proc.stdout + proc.stderr
    assert not WARNING_LINE.search(output), output[-2000:]


def test_tiny_predict_prints_no_warning(synthetic_root: Path, tmp_path: Path) -> None:
    proc = _run(
        str(REPO_ROOT / "tools" / "predict.py"),
        "--config-file", str(INSTANT_CONFIG),
        "--input", str(synthetic_root / "test_release"),
        "--id-map", str(synthetic_root / "test_image_name_to_ids.json"),
        "--output", str(tmp_path / "submission.json"),
        "--no-progress",
        "MODEL.DEVICE", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "submission.json").is_file()
    output = proc.stdout + proc.stderr
    assert not WARNING_LINE.search(output), output[-3000:]
    assert "is_fx_tracing" not in output
