"""The accuracy benchmark (``tools/benchmark.py --accuracy``): every recipe measured the same way.

For each config: train on ``ROOT/train`` for a wall-clock budget (``SOLVER.TIME_BUDGET_MINUTES``,
so configs of different speed get the same time, not the same iterations), predict
``ROOT/test_release`` with the best checkpoint (``model_best.pth``, chosen on the validation
split during training; ``model_final.pth`` when there is none), and score the submission against
``ROOT/test_gt`` exactly as ``tools/evaluate_submission.py`` does: mask AP and AP50 (COCO, every
detection) and PQ, mPQ and AJI (detections scoring at least ``score_thresh``). One table row per
config, written also as JSON and Markdown.

Why the tools run as subprocesses: each config then trains and predicts exactly as a user's
``tools/train_net.py`` and ``tools/predict.py`` would (the row carries both commands, to rerun
one by hand), in a fresh process whose memory and threads do not leak into the next config.

Figures are in percent, the project's convention (detectron2's, and ``evaluate_submission``'s).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cellseg_d2.config import load_cellseg_config
from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.histology import evaluate_histology
from cellseg_d2.evaluation.scoring import evaluate_submission, load_ground_truth_coco
from cellseg_d2.evaluation.submission_check import require_valid_submission
from cellseg_d2.evaluation.submission_read import read_submission
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import CACHE_DIR, ID_MAP_NAME, TEST_DIR, TEST_GT_DIR, TRAIN_DIR

__all__ = [
    "ACCURACY_COLUMNS",
    "accuracy_commands",
    "run_command",
    "format_accuracy_markdown",
    "format_accuracy_table",
    "run_accuracy_benchmark",
    "score_submission",
    "writable_root",
    "write_accuracy_report",
]

logger = logging.getLogger(__name__)

#: The table's columns, in order (figures in percent; train_min is wall-clock minutes).
ACCURACY_COLUMNS: tuple[str, ...] = (
    "config",
    "iterations",
    "train_min",
    "AP",
    "AP50",
    "PQ",
    "mPQ",
    "AJI",
)

#: Runs one command (argv list) and returns its exit status.
Runner = Callable[[list[str]], int]


def run_command(command: list[str]) -> int:
    """Run ``command`` in a subprocess, its output going to this console; return its status."""
    return subprocess.run(command, check=False).returncode


def accuracy_commands(
    config: str | os.PathLike,
    data_root: Path,
    minutes: float,
    run_dir: Path,
    tools_dir: Path,
    opts: Sequence[str] = (),
    weights: str = "model_best.pth",
    python: str = sys.executable,
) -> tuple[list[str], list[str]]:
    """The train and predict commands of one config (argv lists).

    Training writes ``run_dir/model``; prediction reads that run's saved ``config.yaml`` (the
    config that ran, fitted MAX_ITER included) with its checkpoint ``weights`` and writes
    ``run_dir/submission.json``.
    """
    model_dir = run_dir / "model"
    train = [
        python, str(tools_dir / "train_net.py"), "--config-file", str(config), "--overwrite",
        "DATASETS.CELLS_ROOT", str(data_root), "OUTPUT_DIR", str(model_dir),
        "SOLVER.TIME_BUDGET_MINUTES", f"{minutes:g}", *map(str, opts),
    ]  # fmt: skip
    predict = [
        python, str(tools_dir / "predict.py"), "--config-file", str(model_dir / "config.yaml"),
        "--input", str(data_root / TEST_DIR), "--id-map", str(data_root / ID_MAP_NAME),
        "--output", str(run_dir / "submission.json"), "--no-progress",
        "MODEL.WEIGHTS", str(model_dir / weights),
    ]  # fmt: skip
    return train, predict


def writable_root(root: Path, output_dir: Path) -> Path:
    """``root`` itself, or, when it cannot be written (a shared, read-only dataset), a folder
    ``output_dir/data`` of links to its parts.

    Why: training keeps its converted COCO cache and split files inside the dataset root;
    linking (not copying) keeps a large dataset in one place.
    """
    if os.access(root, os.W_OK):
        return root
    linked = output_dir / "data"
    linked.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        link = linked / entry.name
        if entry.name != CACHE_DIR and not link.is_symlink():
            link.symlink_to(entry, target_is_directory=entry.is_dir())
    logger.info("%s is read-only: training from links to it in %s", root, linked)
    return linked


def score_submission(
    data_root: Path,
    submission: Path,
    class_names: Sequence[str],
    score_thresh: float = 0.5,
) -> dict[str, float]:
    """Score ``submission`` against ``data_root/test_gt`` as ``tools/evaluate_submission.py``
    does (validated first); return AP, AP50 (masks), PQ, mPQ, AJI in percent.

    Raises:
        CellDataError: an invalid submission or unreadable ground truth, naming the file.
    """
    entries = load_id_map(data_root / ID_MAP_NAME)
    results = read_submission(submission, entries)
    require_valid_submission(results, entries, str(submission), class_names)
    gt_coco = load_ground_truth_coco(data_root / TEST_GT_DIR, entries, class_names)
    segm = evaluate_submission(gt_coco, results)["segm"]
    histology = evaluate_histology(gt_coco, results, score_thresh)
    return {
        "AP": segm["AP"],
        "AP50": segm["AP50"],
        **{key: histology[key] for key in ("PQ", "mPQ", "AJI")},
    }


def run_accuracy_benchmark(
    configs: Sequence[str | os.PathLike],
    data_root: str | os.PathLike,
    minutes: float,
    output_dir: str | os.PathLike,
    *,
    tools_dir: str | os.PathLike,
    opts: Sequence[str] = (),
    score_thresh: float = 0.5,
    runner: Runner = run_command,
) -> list[dict[str, Any]]:
    """Train, predict and score each config; return one row per config.

    Args:
        configs: config files.
        data_root: a dataset with ``train/``, ``test_release/``, ``test_gt/`` and the id map.
        minutes: the training budget of each config.
        output_dir: each config works in ``output_dir/<config name>/`` (``model/``,
            ``submission.json``).
        tools_dir: the folder of ``train_net.py`` and ``predict.py``.
        opts: ``KEY VALUE`` overrides given to every training run (e.g. ``MODEL.DEVICE cpu``).
        score_thresh: the smallest score PQ, mPQ and AJI count.
        runner: runs a command (tests run the tools in-process).

    Returns:
        Rows with :data:`ACCURACY_COLUMNS` plus ``weights``, ``train_command``,
        ``predict_command``, ``predict_min`` and ``error`` (None, or why the row has no figures).

    Raises:
        CellDataError: ``data_root`` lacks a part the benchmark needs.
    """
    root = Path(data_root).absolute()
    for part in (TRAIN_DIR, TEST_DIR, TEST_GT_DIR, ID_MAP_NAME):
        if not (root / part).exists():
            raise CellDataError(f"{root}: no {part} (the accuracy benchmark needs it)")
    output = Path(output_dir).absolute()
    root = writable_root(root, output)
    return [
        _measure_config(
            config, root, minutes, output / Path(config).stem, Path(tools_dir), opts,
            score_thresh, runner,
        )
        for config in configs
    ]  # fmt: skip


def _measure_config(
    config: str | os.PathLike,
    root: Path,
    minutes: float,
    run_dir: Path,
    tools_dir: Path,
    opts: Sequence[str],
    score_thresh: float,
    runner: Runner,
) -> dict[str, Any]:
    """One row: train, predict, score (a failed step leaves NaN figures and says why)."""
    train, predict = accuracy_commands(config, root, minutes, run_dir, tools_dir, opts)
    model_dir = run_dir / "model"
    row: dict[str, Any] = {
        "config": str(config),
        "iterations": 0,
        "train_min": math.nan,
        **dict.fromkeys(("AP", "AP50", "PQ", "mPQ", "AJI"), math.nan),
        "weights": None,
        "predict_min": math.nan,
        "train_command": shlex.join(train),
        "predict_command": None,
        "error": None,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (model_dir / "model_best.pth", run_dir / "submission.json"):
        stale.unlink(missing_ok=True)  # an earlier benchmark's, never to be taken for this one's
    logger.info("Accuracy benchmark: training %s for %g min", config, minutes)
    start = time.perf_counter()
    status = runner(train)
    row["train_min"] = (time.perf_counter() - start) / 60.0
    if status != 0:
        row["error"] = f"training exited with status {status} (see {model_dir / 'log.txt'})"
        return row
    saved = load_cellseg_config(model_dir / "config.yaml")
    row["iterations"] = int(saved.SOLVER.MAX_ITER)
    weights = next(
        (model_dir / name for name in ("model_best.pth", "model_final.pth")
         if (model_dir / name).is_file()),
        None,
    )  # fmt: skip
    if weights is None:
        row["error"] = f"{model_dir}: training left neither model_best.pth nor model_final.pth"
        return row
    _, predict = accuracy_commands(config, root, minutes, run_dir, tools_dir, opts, weights.name)
    row["weights"] = weights.name
    row["predict_command"] = shlex.join(predict)
    start = time.perf_counter()
    status = runner(predict)
    row["predict_min"] = (time.perf_counter() - start) / 60.0
    if status != 0:
        row["error"] = f"prediction exited with status {status}"
        return row
    row.update(
        score_submission(
            root, run_dir / "submission.json", list(saved.DATASETS.CLASS_NAMES), score_thresh
        )
    )
    return row


def _cell(row: dict[str, Any], column: str) -> str:
    """One table cell: the config's file name, n/a for a missing figure, one decimal (two for
    minutes)."""
    value = row[column]
    if column == "config":
        return Path(value).name
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if column == "train_min" else f"{value:.1f}"


def format_accuracy_table(rows: Sequence[dict[str, Any]]) -> str:
    """An aligned text table, one row per config, the commands listed below it."""
    cells = [list(ACCURACY_COLUMNS)] + [[_cell(r, c) for c in ACCURACY_COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(ACCURACY_COLUMNS))]
    lines = [
        "  ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in
                  enumerate(zip(line, widths)))
        for line in cells
    ]  # fmt: skip
    for row in rows:
        lines.append(f"{Path(row['config']).name}:")
        lines.append(f"  train:   {row['train_command']}")
        if row["predict_command"]:
            lines.append(f"  predict: {row['predict_command']}")
        if row["error"]:
            lines.append(f"  error:   {row['error']}")
    return "\n".join(lines)


def format_accuracy_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table as GitHub Markdown (for READMEs and pull requests), commands as footnotes."""
    lines = [
        "| " + " | ".join(ACCURACY_COLUMNS) + " |",
        "|" + "|".join("---" if c == "config" else "---:" for c in ACCURACY_COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_cell(r, c) for c in ACCURACY_COLUMNS) + " |" for r in rows]
    lines.append("")
    for row in rows:
        lines.append(f"- `{Path(row['config']).name}`: `{row['train_command']}`")
        if row["predict_command"]:
            lines.append(f"  then `{row['predict_command']}`")
        if row["error"]:
            lines.append(f"  error: {row['error']}")
    return "\n".join(lines) + "\n"


def write_accuracy_report(
    rows: Sequence[dict[str, Any]], output_dir: str | os.PathLike, command: str = ""
) -> tuple[Path, Path]:
    """Write ``accuracy.json`` (NaN as null) and ``accuracy.md`` into ``output_dir``; return
    their paths."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    cleaned = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in rows
    ]
    json_path, md_path = output / "accuracy.json", output / "accuracy.md"
    with atomic_write(json_path, "w") as handle:
        json.dump({"command": command, "units": "percent", "rows": cleaned}, handle, indent=2)
        handle.write("\n")
    with atomic_write(md_path, "w") as handle:
        handle.write((f"`{command}`\n\n" if command else "") + format_accuracy_markdown(rows))
    return json_path, md_path
