"""``CellTrainer``: detectron2's ``DefaultTrainer`` plus what cell training needs.

It keeps detectron2's loop, hooks, writers (console ETA, ``metrics.json``, TensorBoard) and launch,
and changes only: the data mapper (:class:`CellDatasetMapper`), the optimizer (``SOLVER.OPTIMIZER``
with full-model gradient clipping), COCO evaluation that counts the full detection budget, a
best-metric checkpoint, atomic checkpoints, and DistributedDataParallel that also works on CPU
(gloo). It runs the config it is given: epochs, warm-up and the CPU fallbacks are settled before,
by :func:`cellseg_d2.config.build_config`.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from cellseg_d2.checkpoint.checkpointer import AtomicDetectionCheckpointer
from cellseg_d2.checkpoint.weights_url import fetch_weights
from cellseg_d2.data.mapper import CellDatasetMapper
from cellseg_d2.data.register import register_cell_datasets_from_config
from cellseg_d2.engine.optimizer import build_cell_optimizer
from cellseg_d2.evaluation.evaluator import build_cell_evaluator
from cellseg_d2.modeling import CellRCNNWithTTA

__all__ = [
    "CellTrainer",
    "TrainingDivergedError",
    "evaluate_weights",
    "prepare_for_launch",
    "warn_if_untrained_frozen_bn",
]

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint on disk is untouched."""


def warn_if_untrained_frozen_bn(cfg: CfgNode) -> bool:
    """Warn when a run starts from no weights with a FrozenBN backbone; return whether it did.

    FrozenBN keeps the statistics it was loaded with; without weights those are the identity
    (mean 0, variance 1), so the backbone trains with no normalisation at all, which trains
    poorly. detectron2's own from-scratch configs use GroupNorm everywhere and ``FREEZE_AT 0``;
    so does ``configs/mask_rcnn_R_50_FPN_scratch_cells.yaml``.
    """
    if cfg.MODEL.WEIGHTS or cfg.MODEL.RESNETS.NORM != "FrozenBN":
        return False
    logger.warning(
        'Training from no weights (MODEL.WEIGHTS "") with a FrozenBN backbone '
        "(MODEL.RESNETS.NORM FrozenBN): its statistics stay at the identity, i.e. the backbone "
        "has no normalisation and trains poorly. To train from scratch use "
        "configs/mask_rcnn_R_50_FPN_scratch_cells.yaml (GroupNorm in backbone, FPN and heads, "
        "FREEZE_AT 0), or start from pretrained weights."
    )
    return True


class EmptyCudaCacheHook(hooks.HookBase):
    """Return cached CUDA memory after each evaluation, so training does not keep the peak of
    inference on large images."""

    def __init__(self, eval_period: int) -> None:
        """Args:
        eval_period: the evaluation period in iterations (0 = only at the end).
        """
        self._period = eval_period

    def after_step(self) -> None:
        """Empty the cache on evaluation iterations."""
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0:
            torch.cuda.empty_cache()

    def after_train(self) -> None:
        """Empty the cache after the final evaluation."""
        torch.cuda.empty_cache()


class CellTrainer(DefaultTrainer):
    """The cellseg-d2 trainer; use it exactly like detectron2's ``DefaultTrainer``."""

    def __init__(self, cfg: CfgNode) -> None:
        """Build model, optimizer, data loader, scheduler, checkpointer and hooks from ``cfg``.

        ``cfg`` is a finished config (:func:`cellseg_d2.config.build_config` with
        ``train_images``): the trainer runs it as it is and never changes it, so the
        ``config.yaml`` that ``default_setup`` saved is the one that ran.

        NOTE: this repeats ``DefaultTrainer.__init__``'s dozen lines instead of calling it, for
        two changes that cannot be injected: DDP without ``device_ids`` for CPU models (gloo), and
        the atomic checkpointer shared by every hook.
        """
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        ddp_kwargs = {} if cfg.MODEL.DEVICE.startswith("cuda") else {"device_ids": None}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
        trainer_type = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_type(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            trust_pickle=cfg.MODEL.CELLSEG.TRUST_PICKLE,
            strict_fit=False,  # a training start may use backbone-only weights: warn only
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from ``OUTPUT_DIR/last_checkpoint`` or load ``MODEL.WEIGHTS``.

        Unreachable weights stop with :class:`WeightsUnavailableError` naming the file.
        """
        resuming = resume and self.checkpointer.has_checkpoint()
        if self.cfg.MODEL.WEIGHTS and not resuming:
            fetch_weights(self.cfg.MODEL.WEIGHTS)
        if not resuming and comm.is_main_process():
            warn_if_untrained_frozen_bn(self.cfg)
        super().resume_or_load(resume=resume)

    def train(self) -> dict[str, Any] | None:
        """Run training and return the last evaluation results (None if none ran).

        A NaN or infinite loss raises :class:`TrainingDivergedError`.
        """
        try:
            super().train()
            return getattr(self, "_last_eval_results", None)
        except FloatingPointError as exc:
            last = os.path.join(self.cfg.OUTPUT_DIR, "last_checkpoint")
            saved = "none was written yet"
            if os.path.isfile(last):
                with open(last, encoding="utf-8") as handle:
                    saved = os.path.join(self.cfg.OUTPUT_DIR, handle.read().strip())
            raise TrainingDivergedError(
                f"training stopped: {exc}\nThe last good checkpoint is intact: {saved}. "
                "Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS, then continue with --resume."
            ) from exc

    def build_hooks(self) -> list[hooks.HookBase]:
        """detectron2's hooks plus the best-metric checkpoint and, on CUDA, cache emptying."""
        ret = super().build_hooks()
        position = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)) + 1
        extra: list[hooks.HookBase] = []
        best = self.cfg.SOLVER.BEST_CHECKPOINT
        if best.METRIC and comm.is_main_process():
            extra.append(
                hooks.BestCheckpointer(
                    self.cfg.TEST.EVAL_PERIOD, self.checkpointer, best.METRIC, mode=best.MODE
                )
            )
        if self.cfg.MODEL.DEVICE.startswith("cuda"):
            extra.append(EmptyCudaCacheHook(self.cfg.TEST.EVAL_PERIOD))
        ret[position:position] = extra
        return ret

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """See :func:`build_cell_optimizer`."""
        return build_cell_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        """detectron2's training loader with :class:`CellDatasetMapper`."""
        return build_detection_train_loader(cfg, mapper=CellDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Any:
        """detectron2's inference loader reading images with the project reader."""
        return build_detection_test_loader(
            cfg, dataset_name, mapper=CellDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        """See :func:`~cellseg_d2.evaluation.evaluator.build_cell_evaluator` (COCO AP counting
        ``TEST.DETECTIONS_PER_IMAGE`` detections, plus the histology metrics when asked)."""
        return build_cell_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(
        cls,
        cfg: CfgNode,
        model: torch.nn.Module,
        evaluators: list[DatasetEvaluator] | None = None,
    ) -> dict[str, Any]:
        """Evaluate on ``DATASETS.TEST`` as detectron2 does, skipping empty datasets with a
        warning (a small dataset can have an empty validation split; detectron2 would stop
        training with an assertion at the first evaluation)."""
        keep = [i for i, name in enumerate(cfg.DATASETS.TEST) if len(DatasetCatalog.get(name))]
        if len(keep) < len(cfg.DATASETS.TEST):
            empty = [n for i, n in enumerate(cfg.DATASETS.TEST) if i not in keep]
            logger.warning("Skipping evaluation on empty dataset(s): %s", ", ".join(empty))
            cfg = cfg.clone()
            cfg.defrost()
            cfg.DATASETS.TEST = tuple(cfg.DATASETS.TEST[i] for i in keep)
            if evaluators is not None:
                evaluators = [evaluators[i] for i in keep]
        if not keep:
            return {}
        return super().test(cfg, model, evaluators)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: torch.nn.Module) -> dict[str, Any]:
        """Evaluate with flip-and-scale test-time augmentation (``TEST.AUG``), keeping the
        model's mask threshold; results are suffixed ``_TTA``."""
        tta_model = CellRCNNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, tta_model, evaluators)
        return {f"{key}_TTA": value for key, value in results.items()}


def prepare_for_launch(cfg: CfgNode, resume: bool, eval_only: bool) -> None:
    """Do, once in the launching process, what every worker process would otherwise race for.

    Converting the datasets writes the COCO-JSON cache and the split files, and fetching
    ``MODEL.WEIGHTS`` downloads them; several ranks doing that at once would race on the same
    files. Done here first, the workers only read, and bad input stops with a
    :class:`~cellseg_d2.data.io.CellDataError` or :class:`WeightsUnavailableError` in this
    process (exit status 2) instead of a traceback from a child process.
    """
    setup_logger(name="cellseg_d2")
    registered = set(register_cell_datasets_from_config(cfg))
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        if name in registered:
            DatasetCatalog.get(name)
    has_checkpoint = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if cfg.MODEL.WEIGHTS and (eval_only or not (resume and has_checkpoint)):
        fetch_weights(cfg.MODEL.WEIGHTS)


def evaluate_weights(cfg: CfgNode) -> dict[str, Any]:
    """Evaluate ``MODEL.WEIGHTS`` on ``DATASETS.TEST`` (and with TTA when ``TEST.AUG.ENABLED``).

    COCOEvaluator logs AP, AP50, AP75 and the per-class AP table and writes
    ``OUTPUT_DIR/inference/<dataset>/coco_instances_results.json``.
    """
    model = CellTrainer.build_model(cfg)
    # No save_dir: a training may be writing checkpoints into OUTPUT_DIR meanwhile. strict_fit:
    # weights that leave model tensors random are refused (WeightsMismatchError), not evaluated.
    checkpointer = AtomicDetectionCheckpointer(
        model, trust_pickle=cfg.MODEL.CELLSEG.TRUST_PICKLE, strict_fit=True
    )
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    results = CellTrainer.test(cfg, model)
    if cfg.TEST.AUG.ENABLED:
        results.update(CellTrainer.test_with_TTA(cfg, model))
    return results
