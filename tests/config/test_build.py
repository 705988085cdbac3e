"""build_config / finish_config: one finished, frozen config; the iteration vs epoch rule; the
schedule line; the saved config.yaml of a run gives back the schedule that ran."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from detectron2.modeling import build_model

from cellseg_d2.config import (
    build_config,
    describe_schedule,
    finish_config,
    load_cellseg_config,
)
from cellseg_d2.errors import ConfigError
from tests.conftest import INSTANT_CONFIG, REPO_ROOT, load_tool

R50 = REPO_ROOT / "configs" / "mask_rcnn_R_50_FPN_cells.yaml"


def _count(n: int, calls: list[int] | None = None):
    """A train-image counter returning ``n`` and recording its calls."""

    def count(cfg) -> int:
        if calls is not None:
            calls.append(1)
        return n

    return count


def test_command_line_max_iter_wins_over_the_base_config_epochs(caplog) -> None:
    assert load_cellseg_config(R50).SOLVER.EPOCHS == 50  # the trap the issue describes
    calls: list[int] = []
    with caplog.at_level(logging.INFO, logger="cellseg_d2"):
        cfg = build_config(R50, ["SOLVER.MAX_ITER", 25], train_images=_count(100, calls))
    assert cfg.SOLVER.MAX_ITER == 25 and cfg.SOLVER.EPOCHS == 0
    per_epoch = -(-100 // cfg.SOLVER.IMS_PER_BATCH)  # the periods stay in epochs
    assert calls and cfg.SOLVER.CHECKPOINT_PERIOD == 5 * per_epoch
    rule = [r.getMessage() for r in caplog.records if "wins over" in r.getMessage()]
    assert rule and "SOLVER.MAX_ITER 25" in rule[0] and "SOLVER.EPOCHS 50" in rule[0]
    assert any(r.getMessage().startswith("Schedule: 25 iterations") for r in caplog.records)


def test_max_iter_and_epochs_both_on_the_command_line_is_an_error_naming_both() -> None:
    with pytest.raises(ConfigError, match=r"SOLVER\.MAX_ITER and SOLVER\.EPOCHS"):
        build_config(R50, ["SOLVER.MAX_ITER", 25, "SOLVER.EPOCHS", 3])
    with pytest.raises(ConfigError, match=r"TEST\.EVAL_PERIOD and TEST\.EVAL_PERIOD_EPOCHS"):
        build_config(R50, ["TEST.EVAL_PERIOD", 5, "TEST.EVAL_PERIOD_EPOCHS", 1.0])
    # EPOCHS 0 with MAX_ITER is simply an iteration schedule
    cfg = build_config(R50, ["SOLVER.MAX_ITER", 25, "SOLVER.EPOCHS", 0], train_images=_count(8))
    assert cfg.SOLVER.MAX_ITER == 25


def test_epochs_in_the_file_win_over_its_max_iter_and_are_logged(caplog) -> None:
    opts = ["SOLVER.IMS_PER_BATCH", 2, "SOLVER.CHECKPOINT_PERIOD_EPOCHS", 1.0]
    with caplog.at_level(logging.INFO, logger="cellseg_d2"):
        cfg = build_config(R50, opts, train_images=_count(5))
    assert cfg.SOLVER.MAX_ITER == 50 * 3  # ceil(5 / 2) iterations per epoch
    assert cfg.SOLVER.CHECKPOINT_PERIOD == 3 and cfg.TEST.EVAL_PERIOD == 15
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Schedule"))
    assert "SOLVER.EPOCHS 50 x 3 iterations per epoch: 5 images" in line
    assert "checkpoint every 3 iterations, evaluate every 15 iterations" in line


def test_finished_config_is_frozen_adapted_and_leaves_its_input_alone() -> None:
    loaded = load_cellseg_config(
        INSTANT_CONFIG, ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", True]
    )
    finished = finish_config(loaded, train_images=_count(4))
    assert finished.is_frozen() and not loaded.is_frozen()
    assert loaded.MODEL.DEVICE == "cuda"
    import torch

    if not torch.cuda.is_available():
        assert finished.MODEL.DEVICE == "cpu" and finished.SOLVER.AMP.ENABLED is False


def test_without_train_images_no_schedule_is_resolved() -> None:
    cfg = build_config(R50)
    assert (
        cfg.SOLVER.EPOCHS == 50 and cfg.SOLVER.MAX_ITER == load_cellseg_config(R50).SOLVER.MAX_ITER
    )


def test_describe_schedule_in_iterations() -> None:
    cfg = build_config(INSTANT_CONFIG)
    text = describe_schedule(cfg)
    assert text.startswith(f"Schedule: {cfg.SOLVER.MAX_ITER} iterations (SOLVER.MAX_ITER)")
    assert "evaluate at the end" in text


def test_saved_config_of_a_training_run_gives_the_schedule_that_ran(
    synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """Train 1 epoch with a too-long warm-up through the tool; config.yaml rebuilt gives back
    the MAX_ITER, warm-up and periods the trainer ran."""
    monkeypatch.setenv("CELLSEG_DATASETS", str(synthetic_root))
    train_net = load_tool(REPO_ROOT / "tools" / "train_net.py")
    output = tmp_path / "run"
    args = train_net.parse_args(
        [
            "--config-file", str(INSTANT_CONFIG),
            "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(output),
            "SOLVER.EPOCHS", "1", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1000",
            "SOLVER.CHECKPOINT_PERIOD_EPOCHS", "0.5", "SOLVER.BEST_CHECKPOINT.METRIC", "",
            "TEST.EVAL_PERIOD", "0",
        ]
    )  # fmt: skip
    cfg = train_net.setup(args)
    ran = train_net.CellTrainer(cfg)
    ran_schedule = (ran.max_iter, ran.cfg.SOLVER.WARMUP_ITERS, ran.cfg.SOLVER.CHECKPOINT_PERIOD)
    assert ran.max_iter >= 2 and ran.cfg.SOLVER.WARMUP_ITERS == ran.max_iter // 10
    saved = output / "config.yaml"
    assert yaml.safe_load(saved.read_text())["SOLVER"]["MAX_ITER"] == ran.max_iter

    from cellseg_d2.data.register import count_train_images

    again = build_config(saved, train_images=count_train_images)
    assert (again.SOLVER.MAX_ITER, again.SOLVER.WARMUP_ITERS, again.SOLVER.CHECKPOINT_PERIOD) == (
        ran_schedule
    )
    assert again.TEST.EVAL_PERIOD == cfg.TEST.EVAL_PERIOD


def test_point_head_class_count_follows_the_roi_heads(caplog) -> None:
    pointrend = REPO_ROOT / "configs" / "demo_pointrend_cells.yaml"
    with caplog.at_level(logging.INFO, logger="cellseg_d2"):
        cfg = build_config(pointrend, ["MODEL.ROI_HEADS.NUM_CLASSES", 1])
    assert cfg.MODEL.POINT_HEAD.NUM_CLASSES == 1 and cfg.is_frozen()
    build_model(cfg)  # PointRend asserts the two counts are equal
    assert any("POINT_HEAD.NUM_CLASSES 4 follows" in r.getMessage() for r in caplog.records)
    assert build_config(pointrend).MODEL.POINT_HEAD.NUM_CLASSES == 4
