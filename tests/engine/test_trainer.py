"""CellTrainer: training, evaluation, checkpoints, resume, AMP fallback, NaN stop, DDP on CPU."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.engine import SimpleTrainer, hooks
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage

from cellseg_d2.checkpoint import WeightsUnavailableError, fetch_weights
from cellseg_d2.checkpoint.checkpointer import AtomicDetectionCheckpointer
from cellseg_d2.config import finish_config
from cellseg_d2.data.register import count_train_images
from cellseg_d2.engine import (
    CellTrainer,
    TrainingDivergedError,
    evaluate_weights,
    warn_if_untrained_frozen_bn,
)
from cellseg_d2.modeling import CellRCNN
from tests.conftest import INSTANT_CONFIG, REPO_ROOT, instant_cfg


@META_ARCH_REGISTRY.register()
class NaNAfterThreeRCNN(CellRCNN):
    """Test-only model whose loss turns NaN from iteration 3 on."""

    def forward(self, batched_inputs):  # noqa: D102
        losses = super().forward(batched_inputs)
        if self.training and get_event_storage().iter >= 3:
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses


class StopAt(hooks.HookBase):
    """Simulates a kill: raises after the given iteration."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_step(self) -> None:
        if self.trainer.iter == self.iteration:
            raise KeyboardInterrupt("simulated kill")


def _trainer(cfg):
    """A trainer on the finished config, as ``train_net.py`` builds it."""
    return CellTrainer(finish_config(cfg, train_images=count_train_images))


def _metrics(output: Path) -> list[dict]:
    with open(output / "metrics.json", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_train_evaluate_and_best_checkpoint(cells_prefix: str, tmp_path: Path) -> None:
    cfg = instant_cfg(
        cells_prefix,
        tmp_path,
        "SOLVER.MAX_ITER", 6,
        "SOLVER.CHECKPOINT_PERIOD", 3,
        "TEST.EVAL_PERIOD", 3,
    )  # fmt: skip
    trainer = _trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert "segm" in results and "bbox" in results
    for name in ("model_0000002.pth", "model_final.pth", "model_best.pth", "metrics.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert list(tmp_path.glob("events.out.tfevents.*")), "no TensorBoard events"
    inference = tmp_path / "inference" / f"{cells_prefix}_val" / "coco_instances_results.json"
    assert inference.is_file()
    # model_best.pth holds the iteration with the best segm/AP among the evaluations.
    evals = [m for m in _metrics(tmp_path) if "segm/AP" in m]
    assert len(evals) == 2
    best = max(evals, key=lambda m: m["segm/AP"])
    saved = torch.load(tmp_path / "model_best.pth", map_location="cpu", weights_only=False)
    assert saved["iteration"] == best["iteration"]


def test_resume_continues_from_saved_iteration(cells_prefix: str, tmp_path: Path) -> None:
    opts = ["SOLVER.MAX_ITER", 8, "SOLVER.CHECKPOINT_PERIOD", 4, "TEST.EVAL_PERIOD", 0]
    cfg = instant_cfg(cells_prefix, tmp_path, *opts, "SOLVER.BEST_CHECKPOINT.METRIC", "")
    trainer = _trainer(cfg)
    trainer.register_hooks([StopAt(5)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not (tmp_path / "model_final.pth").exists()

    resumed = _trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    resumed.train()
    assert resumed.iter == 8 and (tmp_path / "model_final.pth").is_file()
    iterations = [m["iteration"] for m in _metrics(tmp_path) if "total_loss" in m]
    assert iterations[-1] == 7


def test_eval_only_returns_ap_dict(cells_prefix: str, tmp_path: Path) -> None:
    cfg = instant_cfg(cells_prefix, tmp_path, "SOLVER.MAX_ITER", 2, "TEST.EVAL_PERIOD", 0)
    trainer = _trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
    cfg.DATASETS.TEST = (f"{cells_prefix}_val",)
    results = evaluate_weights(cfg)
    segm = results["segm"]
    assert {"AP", "AP50", "AP75", "AP-epithelial", "AP-lymphocyte"} <= set(segm)


def test_amp_on_cpu_falls_back_to_fp32(cells_prefix: str, tmp_path: Path, caplog) -> None:
    cfg = instant_cfg(cells_prefix, tmp_path, "SOLVER.AMP.ENABLED", True, "SOLVER.MAX_ITER", 2)
    cfg.merge_from_list(["TEST.EVAL_PERIOD", 0, "SOLVER.BEST_CHECKPOINT.METRIC", ""])
    trainer = _trainer(cfg)
    assert type(trainer._trainer) is SimpleTrainer
    assert any("full precision" in r.message for r in caplog.records)
    trainer.train()
    assert trainer.iter == 2  # detectron2 leaves iter at MAX_ITER after the loop


def test_nan_loss_stops_with_message_and_intact_checkpoint(cells_prefix: str, tmp_path) -> None:
    cfg = instant_cfg(
        cells_prefix,
        tmp_path,
        "MODEL.META_ARCHITECTURE", "NaNAfterThreeRCNN",
        "SOLVER.MAX_ITER", 8,
        "SOLVER.CHECKPOINT_PERIOD", 2,
    )  # fmt: skip
    trainer = _trainer(cfg)
    with pytest.raises(TrainingDivergedError, match="model_0000001.pth"):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    state = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_checkpoint_save_is_atomic(tmp_path: Path, monkeypatch) -> None:
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    before = (tmp_path / "model_0000001.pth").read_bytes()

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpointer.save("model_0000001")
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    monkeypatch.undo()
    checkpointer.save("model_best")  # a side copy: last_checkpoint keeps the periodic one
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
def test_warmup_longer_than_training_is_shortened_without_epochs(
    cells_prefix: str, tmp_path: Path
) -> None:
    cfg = instant_cfg(
        cells_prefix, tmp_path, "SOLVER.EPOCHS", 0, "SOLVER.MAX_ITER", 80,
        "SOLVER.WARMUP_ITERS", 200, "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR",
    )  # fmt: skip
    trainer = _trainer(cfg)
    assert trainer.cfg.SOLVER.WARMUP_ITERS == 8
    for _ in range(10):  # past the shortened warm-up, the lr is near BASE_LR, not ~1e-8
        trainer.scheduler.step()
    lr = trainer.optimizer.param_groups[0]["lr"]
    assert lr > 0.5 * cfg.SOLVER.BASE_LR


def test_untrained_frozen_bn_backbone_warns_and_names_the_scratch_config(
    cells_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = instant_cfg(cells_prefix, tmp_path, "MODEL.RESNETS.NORM", "FrozenBN")
    trainer = _trainer(cfg)
    with caplog.at_level(logging.WARNING, logger="cellseg_d2.engine.trainer"):
        trainer.resume_or_load(resume=False)
    warnings = [r.getMessage() for r in caplog.records if "FrozenBN" in r.getMessage()]
    assert len(warnings) == 1
    assert "mask_rcnn_R_50_FPN_scratch_cells.yaml" in warnings[0]
    # GroupNorm (the instant config's own norm) or a weights file: nothing to warn about.
    assert not warn_if_untrained_frozen_bn(instant_cfg(cells_prefix, tmp_path))
    with_weights = instant_cfg(cells_prefix, tmp_path, "MODEL.RESNETS.NORM", "FrozenBN")
    with_weights.MODEL.WEIGHTS = "model.pth"
    assert not warn_if_untrained_frozen_bn(with_weights)


def test_two_process_gloo_training(synthetic_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CELLSEG_DATASETS": str(synthetic_root), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(REPO_ROOT / "tools" / "train_net.py"),
        "--num-gpus", "2",
        "--config-file", str(INSTANT_CONFIG),
        "SOLVER.MAX_ITER", "3",
        "SOLVER.IMS_PER_BATCH", "2",
        "TEST.EVAL_PERIOD", "0",
        "DATASETS.VAL_FRACTION", "0.25",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "model_final.pth").is_file()
    assert "World size: 2" in (tmp_path / "log.txt").read_text()


@pytest.mark.parametrize("weights", ["http://127.0.0.1:9/R-50.pkl", "/nonexistent/R-50.pkl"])
def test_unreachable_weights_explain_what_to_do(weights: str) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        fetch_weights(weights)
    message = str(info.value)
    assert weights in message and "mask_rcnn_R_50_FPN_scratch_cells.yaml" in message


def test_train_tool_exits_2_on_unreachable_weights(synthetic_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CELLSEG_DATASETS": str(synthetic_root)}
    cmd = [
        sys.executable,
        str(REPO_ROOT / "tools" / "train_net.py"),
        "--config-file", str(INSTANT_CONFIG),
        "MODEL.WEIGHTS", "http://127.0.0.1:9/R-50.pkl",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "127.0.0.1:9/R-50.pkl" in proc.stderr and "Traceback" not in proc.stderr


def test_two_process_launch_exits_2_on_bad_weights(synthetic_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CELLSEG_DATASETS": str(synthetic_root)}
    cmd = [
        sys.executable,
        str(REPO_ROOT / "tools" / "train_net.py"),
        "--num-gpus", "2",
        "--config-file", str(INSTANT_CONFIG),
        "MODEL.WEIGHTS", "/nonexistent/R-50.pkl",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "/nonexistent/R-50.pkl" in proc.stderr and "Traceback" not in proc.stderr


def test_tiny_dataset_trains_without_validation_images(synthetic_root: Path, tmp_path) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from cellseg_d2.data import register_cell_datasets

    names = register_cell_datasets(synthetic_root, prefix="t_allval", val_fraction=0.999)
    try:
        assert len(DatasetCatalog.get("t_allval_val")) == 0  # every image moved to train
        cfg = instant_cfg("t_allval", tmp_path, "SOLVER.MAX_ITER", 2)
        trainer = _trainer(cfg)
        assert trainer.train() == {}
        assert (tmp_path / "model_final.pth").is_file()
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
