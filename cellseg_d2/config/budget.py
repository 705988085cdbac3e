"""A training schedule fitted to a wall-clock budget (``SOLVER.TIME_BUDGET_MINUTES``): the pure
arithmetic. The timing that feeds it is in :mod:`cellseg_d2.engine.time_budget`.

Design, and why:

- **The budget sets MAX_ITER before the run starts, and the config says so.** The first
  iterations are timed on a throw-away trainer, MAX_ITER is computed, and the finished config
  is written with it before ``default_setup`` saves ``config.yaml``. The alternative, a hook
  that changes ``max_iter`` mid-run, would leave the cosine decay (built from MAX_ITER when the
  scheduler is made), the checkpoint names, ``--resume`` and the saved config disagreeing with
  the run. The price is the timed iterations (a few, thrown away with their trainer).
- **The shape of the schedule is kept, only its length changes.** Every iteration count of the
  configured schedule (MAX_ITER after epochs were resolved, WARMUP_ITERS, STEPS, the checkpoint
  and evaluation periods) is scaled by the same factor, so a config that warms up for 10% of
  training and evaluates five times still does; the cosine of ``WarmupCosineLR`` spans the
  fitted MAX_ITER by construction.
- **Fixed costs are reserved first.** From the budget come off: what the timing already used,
  the start-up of the real run (building the model and the loader, measured on the timing
  trainer), every evaluation the schedule makes (detectron2 evaluates every period and once at
  the end; the number is kept, but evaluations may take at most :data:`MAX_EVAL_SHARE` of the
  budget, else there are fewer of them, never fewer than the final one), every checkpoint save
  (periodic, final and best), and a :data:`SAFETY` margin for what is not timed (logging,
  metric writers, COCO evaluation's own bookkeeping). What is left, divided by the measured
  seconds per iteration (data loading included: the loader is timed with the step), is MAX_ITER.
- **Longer budgets time more iterations.** Iteration times vary by ±20% with the images
  drawn, so a few timed iterations misjudge the pace (a 28-minute run timed 5 iterations at
  2.11 s and then ran at 1.68 s: 6 minutes of its budget unused). The timing goes on for up to
  :data:`TIMING_SHARE` of the budget (at most :data:`MAX_TIMED_STEPS` iterations): a long
  run buys a steadier estimate for a small share of its time, a short one spends nothing more.
- **Never zero iterations.** A budget smaller than its fixed costs trains :data:`MIN_ITERS`
  iterations and says so (``over_budget``), rather than failing after the timing was paid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from detectron2.config import CfgNode

__all__ = [
    "MAX_EVAL_SHARE",
    "MAX_TIMED_STEPS",
    "MIN_ITERS",
    "SAFETY",
    "TIMING_SHARE",
    "BudgetSchedule",
    "RunTiming",
    "apply_budget_schedule",
    "extra_timed_steps",
    "fit_schedule_to_budget",
]

#: Fraction of the budget the arithmetic plans to use; the rest absorbs what is not timed.
SAFETY = 0.95
#: The most of the budget evaluations may take; more, and they are made less frequent.
MAX_EVAL_SHARE = 0.25
#: The fewest iterations a budgeted run trains, however small the budget.
MIN_ITERS = 1
#: The share of the budget the timed iterations may take in all (longer budgets time more).
TIMING_SHARE = 0.03
#: The most iterations timed, however long the budget.
MAX_TIMED_STEPS = 50


def extra_timed_steps(budget_s: float, seconds_per_iter: float, timed: int) -> int:
    """How many more iterations to time after ``timed`` ones took ``seconds_per_iter`` each.

    Why: the more iterations timed, the less the fitted MAX_ITER depends on which images the
    first ones drew; the timing may use up to :data:`TIMING_SHARE` of the budget and
    :data:`MAX_TIMED_STEPS` iterations in all (see the module notes).
    """
    if seconds_per_iter <= 0 or budget_s <= 0:
        return 0
    affordable = math.floor(TIMING_SHARE * budget_s / seconds_per_iter) - timed
    return max(0, min(MAX_TIMED_STEPS - timed, affordable))


@dataclass(frozen=True)
class RunTiming:
    """What one training run costs on this machine, as measured before it starts.

    Attributes:
        seconds_per_iter: wall-clock seconds of one training iteration with its data loading,
            after warm-up.
        startup_s: building the trainer (model, loader, first batches) before iterations run at
            their steady pace; the real run pays it again.
        eval_s: one evaluation on ``DATASETS.TEST`` (0 when there is nothing to evaluate).
        checkpoint_s: one checkpoint save.
        spent_s: budget already used by the timing itself.
    """

    seconds_per_iter: float
    startup_s: float = 0.0
    eval_s: float = 0.0
    checkpoint_s: float = 0.0
    spent_s: float = 0.0


@dataclass(frozen=True)
class BudgetSchedule:
    """The fitted schedule (iteration counts as the config keys take them) and its accounting.

    Attributes:
        max_iter, warmup_iters, steps, checkpoint_period, eval_period: the values for
            ``SOLVER.MAX_ITER``, ``SOLVER.WARMUP_ITERS``, ``SOLVER.STEPS``,
            ``SOLVER.CHECKPOINT_PERIOD`` and ``TEST.EVAL_PERIOD`` (0 = evaluate at the end only).
        evaluations: evaluations the fitted schedule makes (final one included).
        saves: checkpoint saves reserved for (periodic, final, best).
        reserved_s: seconds set aside for everything but the iterations.
        over_budget: the fixed costs alone exceed the budget; ``max_iter`` is :data:`MIN_ITERS`.
    """

    max_iter: int
    warmup_iters: int
    steps: tuple[int, ...]
    checkpoint_period: int
    eval_period: int
    evaluations: int
    saves: int
    reserved_s: float
    over_budget: bool


def fit_schedule_to_budget(
    budget_s: float,
    timing: RunTiming,
    *,
    max_iter: int,
    warmup_iters: int,
    steps: Sequence[int],
    checkpoint_period: int,
    eval_period: int,
    evaluates: bool,
) -> BudgetSchedule:
    """Fit a configured schedule to ``budget_s`` seconds of wall-clock time (see the module
    docstring for the rules).

    Args:
        budget_s: the whole budget, in seconds (> 0).
        timing: the measured costs (``seconds_per_iter`` > 0).
        max_iter, warmup_iters, steps, checkpoint_period, eval_period: the configured schedule,
            in iterations (epochs already resolved); ``eval_period`` 0 = evaluate at the end.
        evaluates: whether the run evaluates at all (``DATASETS.TEST`` not empty).

    Returns:
        The fitted schedule.

    Raises:
        ValueError: a non-positive budget, seconds per iteration or MAX_ITER.
    """
    if budget_s <= 0 or timing.seconds_per_iter <= 0 or max_iter < 1:
        raise ValueError(
            f"budget {budget_s} s, {timing.seconds_per_iter} s/iteration and MAX_ITER "
            f"{max_iter} must all be positive"
        )
    evaluations = 0
    if evaluates:
        evaluations = (max_iter - 1) // eval_period + 1 if eval_period > 0 else 1
        if timing.eval_s > 0:
            affordable = math.floor(MAX_EVAL_SHARE * budget_s / timing.eval_s)
            evaluations = max(1, min(evaluations, affordable))
    periodic_saves = max_iter // checkpoint_period if checkpoint_period > 0 else 0
    saves = periodic_saves + 1 + evaluations  # periodic, final, and at most one best per eval
    reserved = (
        (1.0 - SAFETY) * budget_s
        + timing.spent_s
        + timing.startup_s
        + evaluations * timing.eval_s
        + saves * timing.checkpoint_s
    )
    # The epsilon keeps float noise (0.05 x 60 = 3.0000000000000027) from costing an iteration.
    fitted = math.floor((budget_s - reserved) / timing.seconds_per_iter + 1e-9)
    over_budget = fitted < MIN_ITERS
    fitted = max(MIN_ITERS, fitted)
    scale = fitted / max_iter
    scaled_steps = sorted({round(step * scale) for step in steps})
    return BudgetSchedule(
        max_iter=fitted,
        warmup_iters=min(round(warmup_iters * scale), fitted - 1),
        steps=tuple(step for step in scaled_steps if 0 < step < fitted),
        # None configured (a period beyond MAX_ITER) stays none: beyond the fitted MAX_ITER.
        checkpoint_period=math.ceil(fitted / periodic_saves) if periodic_saves else fitted + 1,
        # p = ceil(fitted / n) makes detectron2's (fitted - 1) // p + 1 evaluations at most n.
        eval_period=math.ceil(fitted / evaluations) if evaluations > 1 else 0,
        evaluations=evaluations,
        saves=saves,
        reserved_s=reserved,
        over_budget=over_budget,
    )


def apply_budget_schedule(cfg: CfgNode, schedule: BudgetSchedule) -> CfgNode:
    """A frozen clone of a finished ``cfg`` holding ``schedule``: the config the run saves.

    The epoch keys are set to 0 because the fitted iteration counts are now the schedule (the
    saved ``config.yaml`` rebuilt gives back exactly these values).
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = schedule.max_iter
    cfg.SOLVER.WARMUP_ITERS = schedule.warmup_iters
    cfg.SOLVER.STEPS = tuple(schedule.steps)
    cfg.SOLVER.CHECKPOINT_PERIOD = schedule.checkpoint_period
    cfg.TEST.EVAL_PERIOD = schedule.eval_period
    cfg.SOLVER.EPOCHS = 0
    cfg.SOLVER.CHECKPOINT_PERIOD_EPOCHS = 0.0
    cfg.TEST.EVAL_PERIOD_EPOCHS = 0.0
    cfg.freeze()
    return cfg
