"""``SOLVER.TIME_BUDGET_MINUTES``: time the first iterations, then fit the schedule to the budget.

:func:`fit_time_budget` is called by ``tools/train_net.py`` between :func:`finish_config` and
``default_setup``, so the ``config.yaml`` a budgeted run saves holds the MAX_ITER, warm-up and
periods it trains with (``--resume`` and evaluation read the same values). The arithmetic and
the reasons for the design are in :mod:`cellseg_d2.config.budget`; this module only measures:
a throw-away :class:`CellTrainer` (temporary output folder, no weights loaded: speed does not
depend on them) runs :data:`WARMUP_STEPS` + :data:`TIMED_STEPS` iterations with its data loader
(and more for a long budget, :func:`~cellseg_d2.config.budget.extra_timed_steps`),
its model predicts up to :data:`EVAL_SAMPLE_IMAGES` images of each test dataset (an untrained
model keeps every low-score detection, so this is the expensive end of evaluation), and one
checkpoint is serialised to memory.

NOTE: the budget is counted from the moment the timing starts; the interpreter start-up and
imports before it are not in it. A resumed run (``--resume`` with a checkpoint) does not time
again: it keeps the schedule its first start saved in ``OUTPUT_DIR/config.yaml``.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import tempfile
import time
from collections.abc import Callable

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from cellseg_d2.config import describe_schedule, load_cellseg_config
from cellseg_d2.config.budget import (
    BudgetSchedule,
    RunTiming,
    apply_budget_schedule,
    extra_timed_steps,
    fit_schedule_to_budget,
)
from cellseg_d2.engine.trainer import CellTrainer

__all__ = [
    "EVAL_SAMPLE_IMAGES",
    "TIMED_STEPS",
    "WARMUP_STEPS",
    "describe_budget",
    "fit_time_budget",
    "measure_run_timing",
]

logger = logging.getLogger(__name__)

#: Iterations run before timing (allocator, loader workers, first batches): start-up cost.
WARMUP_STEPS = 2
#: Iterations timed for the steady seconds per iteration.
TIMED_STEPS = 5
#: Images per test dataset predicted to estimate one evaluation.
EVAL_SAMPLE_IMAGES = 2

#: The keys a budget fits, as a resumed run copies them from its saved config.
_FITTED_KEYS = (
    ("SOLVER", "MAX_ITER"),
    ("SOLVER", "WARMUP_ITERS"),
    ("SOLVER", "STEPS"),
    ("SOLVER", "CHECKPOINT_PERIOD"),
    ("TEST", "EVAL_PERIOD"),
    ("SOLVER", "EPOCHS"),
    ("SOLVER", "CHECKPOINT_PERIOD_EPOCHS"),
    ("TEST", "EVAL_PERIOD_EPOCHS"),
)


def fit_time_budget(
    cfg: CfgNode,
    *,
    resume: bool = False,
    measure: Callable[[CfgNode], RunTiming] | None = None,
) -> CfgNode:
    """The finished ``cfg`` with its schedule fitted to ``SOLVER.TIME_BUDGET_MINUTES`` (``cfg``
    itself when the budget is 0).

    Args:
        cfg: a finished config (:func:`~cellseg_d2.config.finish_config` with the train images
            counted), its datasets registered.
        resume: the run continues from a checkpoint in ``OUTPUT_DIR`` if there is one; then the
            schedule saved there is kept instead of timing again.
        measure: what times the run (default :func:`measure_run_timing`); tests pass a fake.

    Returns:
        A frozen config whose iteration keys are the fitted schedule (epoch keys 0).
    """
    minutes = float(cfg.SOLVER.TIME_BUDGET_MINUTES)
    if minutes <= 0:
        return cfg
    if resume:
        saved = _saved_schedule(cfg)
        if saved is not None:
            return saved
    timing = (measure or measure_run_timing)(cfg)
    # Every process must train the same number of iterations: all take the slowest one's costs.
    gathered = comm.all_gather(timing)
    timing = RunTiming(*(max(values) for values in zip(*(_fields(t) for t in gathered))))
    schedule = fit_schedule_to_budget(
        minutes * 60.0,
        timing,
        max_iter=cfg.SOLVER.MAX_ITER,
        warmup_iters=cfg.SOLVER.WARMUP_ITERS,
        steps=cfg.SOLVER.STEPS,
        checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD,
        eval_period=cfg.TEST.EVAL_PERIOD,
        evaluates=bool(cfg.DATASETS.TEST),
    )
    fitted = apply_budget_schedule(cfg, schedule)
    logger.info(describe_budget(minutes, timing, schedule, cfg.SOLVER.MAX_ITER))
    if schedule.over_budget:
        logger.warning(
            "SOLVER.TIME_BUDGET_MINUTES %g is less than the run's fixed costs (%.0f s: timing, "
            "start-up, evaluations, checkpoints): training only %d iteration(s)",
            minutes,
            schedule.reserved_s,
            schedule.max_iter,
        )
    logger.info(describe_schedule(fitted))
    return fitted


def describe_budget(
    minutes: float, timing: RunTiming, schedule: BudgetSchedule, configured_max_iter: int
) -> str:
    """One line saying what the budget was spent on and the MAX_ITER it gave, for the log."""
    return (
        f"Time budget {minutes:g} min: {timing.seconds_per_iter:.3g} s/iteration with data "
        f"loading, start-up {timing.startup_s:.3g} s, {schedule.evaluations} evaluation(s) of "
        f"{timing.eval_s:.3g} s, {schedule.saves} checkpoint save(s) of "
        f"{timing.checkpoint_s:.3g} s, timing used {timing.spent_s:.3g} s: SOLVER.MAX_ITER "
        f"{configured_max_iter} -> {schedule.max_iter} (warm-up, steps and periods scaled alike)"
    )


def measure_run_timing(cfg: CfgNode) -> RunTiming:
    """Measure what one training run of ``cfg`` costs here (see the module docstring).

    Args:
        cfg: a finished config with registered datasets; it is not changed, and nothing is
            written into its ``OUTPUT_DIR``.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cellseg_budget_") as scratch:
        timing_cfg = cfg.clone()
        timing_cfg.defrost()
        timing_cfg.OUTPUT_DIR = scratch  # its writers (metrics, TensorBoard) write here
        timing_cfg.freeze()
        trainer = CellTrainer(timing_cfg)
        with EventStorage(0) as storage:
            trainer.storage = storage
            _run_steps(trainer, storage, WARMUP_STEPS, cfg.MODEL.DEVICE)
            timed_s = _run_steps(trainer, storage, TIMED_STEPS, cfg.MODEL.DEVICE)
            budget_s = float(cfg.SOLVER.TIME_BUDGET_MINUTES) * 60.0
            extra = extra_timed_steps(budget_s, timed_s / TIMED_STEPS, TIMED_STEPS)
            if extra:
                timed_s += _run_steps(trainer, storage, extra, cfg.MODEL.DEVICE)
            steady = timed_s / (TIMED_STEPS + extra)
        logger.info("Timed %d training iterations: %.3g s each", TIMED_STEPS + extra, steady)
        startup = time.perf_counter() - started - timed_s
        startup -= WARMUP_STEPS * steady  # the warm-up steps' own share is training time
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        eval_s = _evaluation_seconds(timing_cfg, model)
        checkpoint_s = _checkpoint_seconds(model, trainer.optimizer)
        del trainer, model, storage  # the loader's workers stop with the trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the real trainer's model gets the memory back
    return RunTiming(
        seconds_per_iter=steady,
        startup_s=max(0.0, startup),
        eval_s=eval_s,
        checkpoint_s=checkpoint_s,
        spent_s=time.perf_counter() - started,
    )


def _fields(timing: RunTiming) -> tuple[float, ...]:
    return (
        timing.seconds_per_iter,
        timing.startup_s,
        timing.eval_s,
        timing.checkpoint_s,
        timing.spent_s,
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _run_steps(trainer: CellTrainer, storage: EventStorage, steps: int, device: str) -> float:
    """Seconds of ``steps`` training iterations (data loading included), run as ``train()``
    runs them, without the hooks."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.iter = storage.iter
        trainer.run_step()
        storage.step()
    _sync(device)
    return time.perf_counter() - start


def _evaluation_seconds(cfg: CfgNode, model: torch.nn.Module) -> float:
    """Estimated seconds of one evaluation on ``cfg.DATASETS.TEST``: the mean time of up to
    :data:`EVAL_SAMPLE_IMAGES` predicted images (loading included) times each dataset's size."""
    total = 0.0
    for name in cfg.DATASETS.TEST:
        count = len(DatasetCatalog.get(name))
        if not count:
            continue  # CellTrainer.test skips empty datasets
        loader = iter(CellTrainer.build_test_loader(cfg, name))
        sample = min(count, EVAL_SAMPLE_IMAGES)
        with inference_context(model), torch.no_grad():
            _sync(cfg.MODEL.DEVICE)
            start = time.perf_counter()
            for _ in range(sample):
                model(next(loader))
            _sync(cfg.MODEL.DEVICE)
        total += (time.perf_counter() - start) / sample * count
        del loader
    return total


def _checkpoint_seconds(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Seconds to serialise model and optimizer state (what a checkpoint holds) to memory."""
    start = time.perf_counter()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    return time.perf_counter() - start


def _saved_schedule(cfg: CfgNode) -> CfgNode | None:
    """``cfg`` with the fitted keys of the run saved in ``OUTPUT_DIR``, when it has a checkpoint
    and a ``config.yaml``; None otherwise (a fresh start)."""
    saved_path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    checkpoint = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if not (os.path.isfile(saved_path) and os.path.isfile(checkpoint)):
        return None
    saved = load_cellseg_config(saved_path)
    cfg = cfg.clone()
    cfg.defrost()
    for section, key in _FITTED_KEYS:
        setattr(getattr(cfg, section), key, getattr(getattr(saved, section), key))
    cfg.freeze()
    logger.info(
        "Resuming a budgeted run: its fitted schedule from %s (SOLVER.MAX_ITER %d), not timed "
        "again",
        saved_path,
        cfg.SOLVER.MAX_ITER,
    )
    return cfg
