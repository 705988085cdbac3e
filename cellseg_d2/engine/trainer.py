"""``CellTrainer``: detectron2's ``DefaultTrainer`` plus what cell training needs.

It keeps detectron2's loop, hooks, writers (console ETA, ``metrics.json``, TensorBoard) and launch,
and changes only: the data mapper (:class:`CellDatasetMapper`), the optimizer (``SOLVER.OPTIMIZER``
with full-model gradient clipping), epoch-based schedules (``SOLVER.EPOCHS``), COCO evaluation that
counts the full detection budget, a best-metric checkpoint, atomic checkpoints, AMP that falls
back to fp32 on CPU, and DistributedDataParallel that also works on CPU (gloo).
"""

from __future__ import annotations

import itertools
import logging
import math
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
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.mapper import CellDatasetMapper
from ..data.register import register_cell_datasets_from_config
from ..modeling import CellRCNNWithTTA
from .checkpoint import AtomicDetectionCheckpointer
from .weights_url import fetch_weights

__all__ = [
    "CellTrainer",
    "TrainingDivergedError",
    "adapt_config_to_machine",
    "apply_epoch_schedule",
    "build_cell_optimizer",
    "evaluate_weights",
    "fit_warmup_to_schedule",
    "prepare_for_launch",
    "warn_if_untrained_frozen_bn",
]

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint on disk is untouched."""


def adapt_config_to_machine(cfg: CfgNode) -> CfgNode:
    """Make a config runnable on this machine, warning once about each change.

    - ``MODEL.DEVICE`` "cuda" without CUDA becomes "cpu" (detectron2 would crash in ``.to()``);
    - ``SOLVER.AMP.ENABLED`` without CUDA trains in fp32 (detectron2's ``AMPTrainer`` asserts
      CUDA).

    Returns a (possibly) modified clone; the input is not changed.
    """
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        logger.warning(
            "SOLVER.AMP.ENABLED needs CUDA; training in full precision (fp32) on %s instead",
            cfg.MODEL.DEVICE,
        )
        cfg.SOLVER.AMP.ENABLED = False
    if was_frozen:
        cfg.freeze()
    return cfg


def apply_epoch_schedule(cfg: CfgNode) -> CfgNode:
    """Turn ``SOLVER.EPOCHS`` and the ``*_EPOCHS`` periods into iterations.

    One epoch is ``ceil(images in DATASETS.TRAIN / SOLVER.IMS_PER_BATCH)`` iterations, counted on
    the registered datasets. Keys set to 0 leave their iteration counterparts as they are.
    Returns a (possibly) modified clone.
    """
    epoch_keys = (
        cfg.SOLVER.EPOCHS,
        cfg.SOLVER.CHECKPOINT_PERIOD_EPOCHS,
        cfg.TEST.EVAL_PERIOD_EPOCHS,
    )
    if not any(value > 0 for value in epoch_keys):
        return cfg
    num_images = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
    iters_per_epoch = max(1, math.ceil(num_images / cfg.SOLVER.IMS_PER_BATCH))
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    if cfg.SOLVER.EPOCHS > 0:
        cfg.SOLVER.MAX_ITER = int(cfg.SOLVER.EPOCHS * iters_per_epoch)
    if cfg.SOLVER.CHECKPOINT_PERIOD_EPOCHS > 0:
        cfg.SOLVER.CHECKPOINT_PERIOD = max(
            1, round(cfg.SOLVER.CHECKPOINT_PERIOD_EPOCHS * iters_per_epoch)
        )
    if cfg.TEST.EVAL_PERIOD_EPOCHS > 0:
        cfg.TEST.EVAL_PERIOD = max(1, round(cfg.TEST.EVAL_PERIOD_EPOCHS * iters_per_epoch))
    logger.info(
        "Epoch schedule: %d images, %d iterations per epoch -> MAX_ITER %d, checkpoint every %d, "
        "evaluate every %d iterations",
        num_images,
        iters_per_epoch,
        cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.CHECKPOINT_PERIOD,
        cfg.TEST.EVAL_PERIOD,
    )
    if was_frozen:
        cfg.freeze()
    return cfg


def fit_warmup_to_schedule(cfg: CfgNode) -> CfgNode:
    """Shorten a warm-up that is as long as training (or longer) to a tenth of ``MAX_ITER``.

    A warm-up that never ends trains at a fraction of ``BASE_LR`` throughout (an 80-iteration run
    with the base configs' 200 warm-up iterations trained at lr ~1e-8). This applies whatever
    set ``MAX_ITER``: ``SOLVER.EPOCHS``, a config file or an override. Returns a (possibly)
    modified clone.
    """
    if cfg.SOLVER.WARMUP_ITERS < cfg.SOLVER.MAX_ITER:
        return cfg
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    shortened = cfg.SOLVER.MAX_ITER // 10
    logger.warning(
        "SOLVER.WARMUP_ITERS %d >= SOLVER.MAX_ITER %d: warm-up shortened to %d iterations",
        cfg.SOLVER.WARMUP_ITERS,
        cfg.SOLVER.MAX_ITER,
        shortened,
    )
    cfg.SOLVER.WARMUP_ITERS = shortened
    if was_frozen:
        cfg.freeze()
    return cfg


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


def _with_full_model_clipping(
    optimizer_type: type[torch.optim.Optimizer], max_norm: float
) -> type[torch.optim.Optimizer]:
    """Subclass ``optimizer_type`` so that ``step`` first clips the norm of all gradients together.

    detectron2's own clipping works per parameter; the seed recipe clips the whole model's
    gradient norm (``torch.nn.utils.clip_grad_norm_``), as Mask2Former does. With AMP, the
    ``GradScaler`` unscales gradients before calling ``step``, so the norm is in true units.
    """

    class FullModelGradientClippingOptimizer(optimizer_type):
        def step(self, closure: Any = None) -> Any:
            params = itertools.chain(*(group["params"] for group in self.param_groups))
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"{optimizer_type.__name__}WithFullModelClip"
    return FullModelGradientClippingOptimizer


def build_cell_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer named by ``SOLVER.OPTIMIZER`` ("ADAMW" or "SGD").

    Parameter groups (norm and bias weight decay, bias LR factor) are detectron2's defaults;
    clipping follows ``SOLVER.CLIP_GRADIENTS`` with the extra ``CLIP_TYPE: full_model``.

    Raises:
        NotImplementedError: for any other optimizer name.
    """
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        optimizer_type, kwargs = (
            torch.optim.SGD,
            {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV},
        )
    elif name == "ADAMW":
        optimizer_type, kwargs = torch.optim.AdamW, {}
    else:
        raise NotImplementedError(f"SOLVER.OPTIMIZER '{cfg.SOLVER.OPTIMIZER}': use ADAMW or SGD")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_type = _with_full_model_clipping(optimizer_type, clip.CLIP_VALUE)
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    return optimizer_type(params, lr=cfg.SOLVER.BASE_LR, **kwargs)


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

        NOTE: this repeats ``DefaultTrainer.__init__``'s dozen lines instead of calling it, for
        two changes that cannot be injected: DDP without ``device_ids`` for CPU models (gloo), and
        the atomic checkpointer shared by every hook.
        """
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = fit_warmup_to_schedule(apply_epoch_schedule(adapt_config_to_machine(cfg)))
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

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
        """COCO box and mask AP counting ``TEST.DETECTIONS_PER_IMAGE`` detections per image.

        NOTE: detectron2's own train_net.py leaves ``max_dets_per_image`` at COCO's 100, which
        silently ignores detections beyond the 100th in images with hundreds of cells.
        """
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # A cell split writes its COCO json_file when first loaded; make sure it exists.
        DatasetCatalog.get(dataset_name)
        coco = COCOEvaluator(
            dataset_name,
            tasks=("bbox", "segm"),
            distributed=True,
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        )
        if not cfg.TEST.HISTOLOGY_METRICS:
            return coco
        # lazy: evaluation.histology imports inference.submission, whose package imports engine
        from cellseg_d2.evaluation.evaluator import HistologyEvaluator

        return DatasetEvaluators([coco, HistologyEvaluator(dataset_name)])

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
