"""Tests for cellseg_d2.engine.time_budget: the budget fitted from a (fake or real) timing, the
saved config of a budgeted run, and a resumed run keeping its schedule."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from cellseg_d2.config import budget, finish_config
from cellseg_d2.config.budget import RunTiming
from cellseg_d2.data.register import count_train_images
from cellseg_d2.engine import fit_time_budget, measure_run_timing, time_budget
from tests.conftest import INSTANT_CONFIG, REPO_ROOT, instant_cfg, load_tool

FAKE = RunTiming(seconds_per_iter=0.125, startup_s=2.0, eval_s=3.0, checkpoint_s=0.5, spent_s=4.0)


@pytest.fixture()
def fewer_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """One warm-up step, one timed step, one evaluation image: the same code, less CPU."""
    monkeypatch.setattr(time_budget, "WARMUP_STEPS", 1)
    monkeypatch.setattr(time_budget, "TIMED_STEPS", 1)
    monkeypatch.setattr(time_budget, "EVAL_SAMPLE_IMAGES", 1)
    monkeypatch.setattr(budget, "MAX_TIMED_STEPS", 1)  # no extra timed steps


def _finished(prefix: str, output: Path, *opts: object):
    return finish_config(instant_cfg(prefix, output, *opts), train_images=count_train_images)


def test_fake_timing_gives_the_exact_schedule(cells_prefix: str, tmp_path: Path, caplog) -> None:
    cfg = _finished(cells_prefix, tmp_path, "SOLVER.TIME_BUDGET_MINUTES", 1.0)
    # instant_test: MAX_ITER 20, warm-up 5, checkpoint every 10, evaluation at the end only.
    with caplog.at_level(logging.INFO, logger="cellseg_d2"):
        fitted = fit_time_budget(cfg, measure=lambda c: FAKE)
    # reserved: 3 (5% of 60) + 4 spent + 2 start-up + 1 x 3 eval + 4 saves x 0.5 = 14 s;
    # (60 - 14) / 0.125 = 368 iterations; warm-up 5 x 368 / 20 = 92; two periodic saves kept.
    solver = fitted.SOLVER
    assert (solver.MAX_ITER, solver.WARMUP_ITERS, solver.CHECKPOINT_PERIOD) == (368, 92, 184)
    assert fitted.TEST.EVAL_PERIOD == 0 and fitted.is_frozen()
    assert solver.TIME_BUDGET_MINUTES == 1.0  # the saved config says it was a budgeted run
    assert any("SOLVER.MAX_ITER 20 -> 368" in r.getMessage() for r in caplog.records)


def test_no_budget_leaves_the_config_alone(cells_prefix: str, tmp_path: Path) -> None:
    cfg = _finished(cells_prefix, tmp_path)

    def must_not_time(c):
        raise AssertionError("timed without a budget")

    assert fit_time_budget(cfg, measure=must_not_time) is cfg


def test_resumed_run_keeps_its_saved_schedule(cells_prefix: str, tmp_path: Path) -> None:
    cfg = _finished(cells_prefix, tmp_path, "SOLVER.TIME_BUDGET_MINUTES", 1.0)
    first = fit_time_budget(cfg, measure=lambda c: FAKE)
    (tmp_path / "config.yaml").write_text(first.dump(), encoding="utf-8")
    (tmp_path / "last_checkpoint").write_text("model_0000183.pth", encoding="utf-8")

    def must_not_time(c):
        raise AssertionError("a resumed run timed again")

    resumed = fit_time_budget(cfg, resume=True, measure=must_not_time)
    assert resumed.SOLVER.MAX_ITER == 368 and resumed.SOLVER.WARMUP_ITERS == 92
    # without --resume the run starts anew and is timed anew
    slower = RunTiming(seconds_per_iter=0.25, spent_s=4.0)
    assert fit_time_budget(cfg, measure=lambda c: slower).SOLVER.MAX_ITER != 368


def test_real_timing_is_positive_and_writes_nothing(
    cells_prefix: str, tmp_path: Path, fewer_steps: None
) -> None:
    output = tmp_path / "run"
    cfg = _finished(cells_prefix, output, "SOLVER.TIME_BUDGET_MINUTES", 1.0)
    timing = measure_run_timing(cfg)
    assert timing.seconds_per_iter > 0 and timing.eval_s > 0 and timing.checkpoint_s > 0
    assert timing.spent_s >= timing.startup_s >= 0
    assert not output.exists()  # the throw-away trainer wrote into a temporary folder


def test_a_long_budget_times_more_iterations_and_averages_them_all(
    cells_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def fake_steps(trainer, storage, steps: int, device: str) -> float:
        calls.append(steps)  # warm-up 2 s a step, then 3 s, then 1 s: the mean is over both
        return steps * (2.0 if len(calls) == 1 else 3.0 if len(calls) == 2 else 1.0)

    monkeypatch.setattr(time_budget, "_run_steps", fake_steps)
    monkeypatch.setattr(time_budget, "EVAL_SAMPLE_IMAGES", 1)
    cfg = _finished(cells_prefix, tmp_path / "run", "SOLVER.TIME_BUDGET_MINUTES", 10.0)
    timing = measure_run_timing(cfg)
    # 3% of 600 s = 18 s at 3 s: 6 iterations in all, so 1 more after the first 5
    assert calls == [time_budget.WARMUP_STEPS, time_budget.TIMED_STEPS, 1]
    assert timing.seconds_per_iter == pytest.approx((5 * 3.0 + 1 * 1.0) / 6)


def test_train_net_saves_the_fitted_config(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fewer_steps: None
) -> None:
    monkeypatch.setenv("CELLSEG_DATASETS", str(synthetic_root))
    train_net = load_tool(REPO_ROOT / "tools" / "train_net.py")
    output = tmp_path / "run"
    args = train_net.parse_args(
        [
            "--config-file", str(INSTANT_CONFIG), "MODEL.DEVICE", "cpu",
            "OUTPUT_DIR", str(output), "SOLVER.TIME_BUDGET_MINUTES", "0.5",
        ]
    )  # fmt: skip
    cfg = train_net.setup(args)
    saved = yaml.safe_load((output / "config.yaml").read_text(encoding="utf-8"))
    assert saved["SOLVER"]["MAX_ITER"] == cfg.SOLVER.MAX_ITER >= 1
    assert saved["SOLVER"]["WARMUP_ITERS"] == cfg.SOLVER.WARMUP_ITERS < cfg.SOLVER.MAX_ITER
    assert saved["SOLVER"]["TIME_BUDGET_MINUTES"] == 0.5
    assert "Time budget 0.5 min" in (output / "log.txt").read_text(encoding="utf-8")
