"""Tests for cellseg_d2.config.budget: the time-budget arithmetic, checked to the iteration."""

from __future__ import annotations

import pytest

from cellseg_d2.config import load_cellseg_config
from cellseg_d2.config.budget import (
    MAX_TIMED_STEPS,
    TIMING_SHARE,
    BudgetSchedule,
    RunTiming,
    apply_budget_schedule,
    extra_timed_steps,
    fit_schedule_to_budget,
)
from tests.conftest import INSTANT_CONFIG

SCHEDULE = {
    "max_iter": 1000,
    "warmup_iters": 100,
    "steps": (600, 800),
    "checkpoint_period": 250,
    "eval_period": 250,
    "evaluates": True,
}


def _timing(**changes: float) -> RunTiming:
    values = {
        "seconds_per_iter": 0.5,
        "startup_s": 10.0,
        "eval_s": 20.0,
        "checkpoint_s": 1.0,
        "spent_s": 30.0,
    }
    return RunTiming(**{**values, **changes})


def test_budget_minus_fixed_costs_over_seconds_per_iteration() -> None:
    fitted = fit_schedule_to_budget(600.0, _timing(), **SCHEDULE)
    # 4 evaluations ((1000 - 1) // 250 + 1), 9 saves (4 periodic + final + 4 best);
    # reserved = 5% of 600 + 30 spent + 10 start-up + 4 x 20 + 9 x 1 = 159 s
    assert fitted.evaluations == 4 and fitted.saves == 9
    assert fitted.reserved_s == pytest.approx(159.0)
    assert fitted.max_iter == 882  # (600 - 159) / 0.5
    assert fitted.warmup_iters == 88  # 100 x 0.882
    assert fitted.steps == (529, 706)
    assert fitted.checkpoint_period == 221 and fitted.eval_period == 221
    assert (fitted.max_iter - 1) // fitted.eval_period + 1 == 4  # detectron2's count: kept
    assert not fitted.over_budget


def test_evaluations_are_capped_at_a_quarter_of_the_budget() -> None:
    fitted = fit_schedule_to_budget(600.0, _timing(eval_s=100.0), **SCHEDULE)
    # floor(0.25 x 600 / 100) = 1: only the final evaluation, reserved once
    assert fitted.evaluations == 1 and fitted.eval_period == 0
    assert fitted.saves == 6
    assert fitted.max_iter == 848  # (600 - (30 + 30 + 10 + 100 + 6)) / 0.5
    fitted = fit_schedule_to_budget(600.0, _timing(eval_s=50.0), **SCHEDULE)
    assert fitted.evaluations == 3 and fitted.eval_period == 248  # ceil(744 / 3)
    assert fitted.max_iter == 744  # (600 - (30 + 30 + 10 + 150 + 8)) / 0.5


def test_without_test_datasets_nothing_is_reserved_for_evaluation() -> None:
    fitted = fit_schedule_to_budget(600.0, _timing(), **{**SCHEDULE, "evaluates": False})
    assert fitted.evaluations == 0 and fitted.eval_period == 0 and fitted.saves == 5
    assert fitted.max_iter == 1050  # (600 - (30 + 30 + 10 + 5)) / 0.5; may exceed the config's


def test_a_budget_below_the_fixed_costs_trains_one_iteration() -> None:
    fitted = fit_schedule_to_budget(10.0, _timing(), **SCHEDULE)
    assert fitted.over_budget and fitted.max_iter == 1
    assert fitted.warmup_iters == 0 and fitted.steps == ()
    assert fitted.checkpoint_period == 1 and fitted.eval_period == 0


def test_no_periodic_checkpoint_stays_none_and_end_only_evaluation_stays_so() -> None:
    schedule = {**SCHEDULE, "checkpoint_period": 5000, "eval_period": 0}
    fitted = fit_schedule_to_budget(600.0, _timing(), **schedule)
    assert fitted.evaluations == 1 and fitted.eval_period == 0
    assert fitted.checkpoint_period == fitted.max_iter + 1  # beyond training: final save only
    assert fitted.max_iter == 1016  # (600 - (30 + 30 + 10 + 20 + 2)) / 0.5


@pytest.mark.parametrize(
    "budget, timing, max_iter",
    [(0.0, _timing(), 10), (60.0, _timing(seconds_per_iter=0.0), 10), (60.0, _timing(), 0)],
)
def test_nonsense_inputs_raise(budget: float, timing: RunTiming, max_iter: int) -> None:
    with pytest.raises(ValueError, match="must all be positive"):
        fit_schedule_to_budget(budget, timing, **{**SCHEDULE, "max_iter": max_iter})


def test_applied_schedule_is_the_config_with_epochs_off() -> None:
    cfg = load_cellseg_config(INSTANT_CONFIG, ["SOLVER.EPOCHS", 3])
    cfg.freeze()
    schedule = BudgetSchedule(
        max_iter=40,
        warmup_iters=4,
        steps=(30,),
        checkpoint_period=20,
        eval_period=10,
        evaluations=4,
        saves=7,
        reserved_s=1.0,
        over_budget=False,
    )
    fitted = apply_budget_schedule(cfg, schedule)
    assert fitted.is_frozen() and cfg.SOLVER.EPOCHS == 3  # the input is left alone
    solver = fitted.SOLVER
    assert (solver.MAX_ITER, solver.WARMUP_ITERS, solver.STEPS) == (40, 4, (30,))
    assert (solver.CHECKPOINT_PERIOD, fitted.TEST.EVAL_PERIOD) == (20, 10)
    assert solver.EPOCHS == 0 and solver.CHECKPOINT_PERIOD_EPOCHS == 0.0
    assert fitted.TEST.EVAL_PERIOD_EPOCHS == 0.0


def test_longer_budgets_time_more_iterations_up_to_a_share_and_a_cap() -> None:
    assert TIMING_SHARE == 0.03 and MAX_TIMED_STEPS == 50
    # 28 minutes at 1.84 s: 3% is 50.4 s, 27 iterations in all, 22 more after the first 5
    assert extra_timed_steps(28 * 60, 1.84, 5) == 22
    assert extra_timed_steps(5 * 60, 3.5, 5) == 0  # 9 s buys 2 iterations: 5 already timed
    assert extra_timed_steps(600 * 60, 0.5, 5) == 45  # capped at 50 in all
    assert extra_timed_steps(28 * 60, 0.0, 5) == extra_timed_steps(0.0, 1.0, 5) == 0
