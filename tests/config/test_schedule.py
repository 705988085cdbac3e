"""The finishing rules: machine adaptation, epochs into iterations, a warm-up that fits."""

from __future__ import annotations

import pytest
import torch

from cellseg_d2.config import (
    adapt_config_to_machine,
    apply_epoch_schedule,
    fit_warmup_to_schedule,
    load_cellseg_config,
)
from tests.conftest import INSTANT_CONFIG


def test_epochs_become_iterations() -> None:
    cfg = load_cellseg_config(INSTANT_CONFIG, ["SOLVER.EPOCHS", 3, "SOLVER.IMS_PER_BATCH", 2])
    cfg.merge_from_list(["SOLVER.CHECKPOINT_PERIOD_EPOCHS", 1.0, "TEST.EVAL_PERIOD_EPOCHS", 2.0])
    resolved = apply_epoch_schedule(cfg, 7)  # ceil(7 / 2) = 4 iterations per epoch
    assert resolved.SOLVER.MAX_ITER == 12
    assert resolved.SOLVER.CHECKPOINT_PERIOD == 4
    assert resolved.TEST.EVAL_PERIOD == 8
    assert cfg.SOLVER.MAX_ITER == 20  # the input is left alone


def test_no_epoch_keys_leave_the_config_as_it_is() -> None:
    cfg = load_cellseg_config(INSTANT_CONFIG)
    assert apply_epoch_schedule(cfg, 1000) is cfg


def test_warmup_longer_than_training_is_shortened_to_a_tenth() -> None:
    cfg = load_cellseg_config(INSTANT_CONFIG, ["SOLVER.MAX_ITER", 80, "SOLVER.WARMUP_ITERS", 200])
    assert fit_warmup_to_schedule(cfg).SOLVER.WARMUP_ITERS == 8
    assert cfg.SOLVER.WARMUP_ITERS == 200
    short = load_cellseg_config(INSTANT_CONFIG, ["SOLVER.MAX_ITER", 80, "SOLVER.WARMUP_ITERS", 79])
    assert fit_warmup_to_schedule(short).SOLVER.WARMUP_ITERS == 79


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cuda_and_amp_fall_back_on_cpu_with_a_warning(caplog) -> None:
    cfg = load_cellseg_config(INSTANT_CONFIG, ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", True])
    cfg.freeze()
    with caplog.at_level("WARNING"):
        adapted = adapt_config_to_machine(cfg)
    assert adapted.MODEL.DEVICE == "cpu" and adapted.SOLVER.AMP.ENABLED is False
    assert adapted.is_frozen() and cfg.MODEL.DEVICE == "cuda"
    assert any("AMP" in record.getMessage() for record in caplog.records)
