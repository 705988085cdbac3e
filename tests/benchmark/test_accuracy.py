"""Tests for cellseg_d2.benchmark.accuracy and ``tools/benchmark.py --accuracy``: scoring checked
exact on the ground truth itself, a whole train-predict-score row on synthetic data (the tools
run in-process), the table, the reports, failures and a read-only dataset root."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from cellseg_d2.benchmark import accuracy
from cellseg_d2.benchmark.accuracy import (
    ACCURACY_COLUMNS,
    accuracy_commands,
    format_accuracy_table,
    run_accuracy_benchmark,
    run_command,
    score_submission,
    writable_root,
    write_accuracy_report,
)
from cellseg_d2.engine import time_budget
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.submission import write_submission
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES
from tests.conftest import INSTANT_CONFIG, REPO_ROOT, load_tool

TOOLS = REPO_ROOT / "tools"
FIGURES = ("AP", "AP50", "PQ", "mPQ", "AJI")


def test_ground_truth_scores_100_through_the_benchmark_scorer(dataset, tmp_path: Path) -> None:
    root, _, perfect = dataset
    submission = tmp_path / "submission.json"
    write_submission(perfect, submission, zip_output=False)
    scores = score_submission(root, submission, DEFAULT_CLASS_NAMES)
    assert set(scores) == set(FIGURES)
    for name in FIGURES:
        assert scores[name] == pytest.approx(100.0), name
    # one cell missing costs PQ, AJI and AP: the scorer can fail
    write_submission(perfect[1:], submission, zip_output=False)
    worse = score_submission(root, submission, DEFAULT_CLASS_NAMES)
    assert all(worse[name] < 100.0 for name in ("AP", "PQ", "AJI"))


def test_commands_train_with_the_budget_and_predict_with_the_saved_config(tmp_path: Path) -> None:
    train, predict = accuracy_commands(
        "configs/demo_cells.yaml", Path("/data"), 2.5, tmp_path, TOOLS, ["MODEL.DEVICE", "cpu"]
    )
    assert train[:2] == [sys.executable, str(TOOLS / "train_net.py")]
    assert train[train.index("SOLVER.TIME_BUDGET_MINUTES") + 1] == "2.5"
    assert train[train.index("DATASETS.CELLS_ROOT") + 1] == "/data"
    assert train[train.index("OUTPUT_DIR") + 1] == str(tmp_path / "model")
    assert train[-2:] == ["MODEL.DEVICE", "cpu"] and "--overwrite" in train
    assert predict[predict.index("--config-file") + 1] == str(tmp_path / "model" / "config.yaml")
    assert predict[predict.index("--input") + 1] == "/data/test_release"
    assert predict[-2:] == ["MODEL.WEIGHTS", str(tmp_path / "model" / "model_best.pth")]


@pytest.fixture()
def in_process(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Callable[[list[str]], int], list[list[str]]]]:
    """A runner calling the tools in this process (no interpreter start per step), the budget
    timing cut to one step, and the ``cells_*`` datasets the training registers removed."""
    monkeypatch.setattr(time_budget, "WARMUP_STEPS", 1)
    monkeypatch.setattr(time_budget, "TIMED_STEPS", 1)
    monkeypatch.setattr(time_budget, "EVAL_SAMPLE_IMAGES", 1)
    calls: list[list[str]] = []
    before = set(DatasetCatalog.list())

    def run(command: list[str]) -> int:
        calls.append(command)
        tool = load_tool(Path(command[1]))
        args = tool.parse_args(command[2:])
        return tool.run(args) if hasattr(tool, "run") else tool.main(args)

    yield run, calls
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_one_config_trains_predicts_and_scores(
    synthetic_root: Path, tmp_path: Path, in_process
) -> None:
    runner, calls = in_process
    output = tmp_path / "accuracy"
    rows = run_accuracy_benchmark(
        [INSTANT_CONFIG], synthetic_root, 0.05, output, tools_dir=TOOLS,
        opts=["MODEL.DEVICE", "cpu"], runner=runner,
    )  # fmt: skip
    assert len(calls) == 2 and len(rows) == 1
    row = rows[0]
    assert row["error"] is None, row["error"]
    assert set(ACCURACY_COLUMNS) <= set(row)
    saved = output / "instant_test" / "model" / "config.yaml"
    assert row["iterations"] >= 1 and f"MAX_ITER: {row['iterations']}\n" in saved.read_text()
    assert row["train_min"] > 0 and row["weights"] in ("model_best.pth", "model_final.pth")
    for name in FIGURES:
        assert 0.0 <= row[name] <= 100.0, (name, row[name])
    assert row["predict_command"].endswith(row["weights"])
    table = format_accuracy_table(rows)
    assert table.splitlines()[0].split() == list(ACCURACY_COLUMNS)
    assert table.splitlines()[1].split()[0] == "instant_test.yaml"
    assert row["train_command"] in table
    json_path, md_path = write_accuracy_report(rows, output, command="python tools/benchmark.py")
    written = json.loads(json_path.read_text())
    assert written["units"] == "percent" and written["rows"][0]["AP"] == row["AP"]
    assert md_path.read_text().count("| instant_test.yaml |") == 1


def test_failed_training_gives_a_row_without_figures(synthetic_root: Path, tmp_path: Path) -> None:
    rows = run_accuracy_benchmark(
        [INSTANT_CONFIG], synthetic_root, 1.0, tmp_path, tools_dir=TOOLS, runner=lambda c: 2
    )
    assert "training exited with status 2" in rows[0]["error"]
    assert all(math.isnan(rows[0][name]) for name in FIGURES)
    table = format_accuracy_table(rows)
    assert "n/a" in table and "error:" in table
    json_path, _ = write_accuracy_report(rows, tmp_path)
    assert json.loads(json_path.read_text())["rows"][0]["AP"] is None  # NaN is not JSON


def test_missing_dataset_part_is_named(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(CellDataError, match="no test_release"):
        run_accuracy_benchmark([INSTANT_CONFIG], tmp_path, 1.0, tmp_path / "out", tools_dir=TOOLS)


def test_read_only_root_is_used_through_links(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert writable_root(synthetic_root, tmp_path) == synthetic_root
    monkeypatch.setattr(accuracy.os, "access", lambda path, mode: False)
    linked = writable_root(synthetic_root, tmp_path)
    assert linked == tmp_path / "data"
    assert (linked / "train").is_symlink() and (linked / "train").resolve() == (
        synthetic_root / "train"
    ).resolve()
    assert not (linked / ".cellseg_cache").exists()  # the copy keeps its own cache
    assert writable_root(synthetic_root, tmp_path) == linked  # a second run reuses the links


def test_run_command_returns_the_exit_status() -> None:
    assert run_command([sys.executable, "-c", "raise SystemExit(3)"]) == 3


def test_tool_accuracy_flags() -> None:
    tool = load_tool(TOOLS / "benchmark.py")
    args = tool.parse_args(["--accuracy", "a.yaml,b.yaml", "--data", "d", "--minutes", "5"])
    assert args.accuracy == ["a.yaml", "b.yaml"] and args.minutes == 5.0
    for bad in (
        ["--accuracy", "a.yaml", "--data", "d"],
        ["--accuracy", "a.yaml", "--minutes", "1"],
    ):
        with pytest.raises(SystemExit):
            tool.parse_args(bad)
