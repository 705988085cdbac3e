"""The one place where cellseg-d2 adds keys to detectron2's config.

Keys detectron2 already has are reused, never re-declared: ``SOLVER.AMP.ENABLED``,
``SOLVER.LR_SCHEDULER_NAME`` (``"WarmupCosineLR"``), ``SOLVER.CLIP_GRADIENTS``,
``TEST.DETECTIONS_PER_IMAGE``, ``TEST.AUG``, ``INPUT.CROP``, ``SEED``.
"""

from __future__ import annotations

import os

from detectron2.config import CfgNode as CN
from detectron2.projects.point_rend import add_pointrend_config

from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES

__all__ = ["add_cellseg_config", "default_cells_root", "get_cellseg_cfg"]


def default_cells_root() -> str:
    """Where the cell dataset lives unless the config says otherwise.

    Follows detectron2's ``DETECTRON2_DATASETS`` convention with its own variable,
    ``CELLSEG_DATASETS``; falls back to ``datasets/cells`` relative to the working directory.
    """
    return os.environ.get("CELLSEG_DATASETS", os.path.join("datasets", "cells"))


def add_cellseg_config(cfg: CN) -> None:
    """Add every cellseg-d2 key, with a safe default, to a detectron2 config in place.

    Call it right after ``get_cfg()`` and before ``merge_from_file``. Calling it twice is harmless.
    """
    # Long by design: every key the project adds lives here, each with its comment (one home).
    _c = cfg
    # ---- Data ----
    # Dataset folder with train/, test_release/ and test_image_name_to_ids.json.
    _c.DATASETS.CELLS_ROOT = default_cells_root()
    # Fraction of training images held out as <prefix>_val (ignored when NUM_FOLDS > 0).
    _c.DATASETS.VAL_FRACTION = 0.1
    # Seed of the hash-based train/val split; same seed, same split.
    _c.DATASETS.SPLIT_SEED = 0
    # Number of cross-validation folds; 0 disables folds and uses VAL_FRACTION.
    _c.DATASETS.NUM_FOLDS = 0
    # Which fold (0..NUM_FOLDS-1) is the validation set when NUM_FOLDS > 0.
    _c.DATASETS.FOLD = 0
    # Instances with fewer pixels than this are dropped at conversion (counted in the log).
    _c.DATASETS.MIN_INSTANCE_AREA = 4
    # Most instance ids one training image may hold (all its masks together); a mask with more is
    # refused when the dataset is prepared (training would stack one full-size mask per instance).
    _c.DATASETS.MAX_INSTANCES_PER_IMAGE = 10000
    # Class names in order: name K is the class of classK.tif (K = 1..N); N must equal
    # MODEL.ROI_HEADS.NUM_CLASSES. Default: the four MoNuSAC 2020 classes.
    _c.DATASETS.CLASS_NAMES = list(DEFAULT_CLASS_NAMES)

    # ---- Augmentation (CellDatasetMapper) ----
    # Micrometres per pixel of the images the model is trained on (0 = unknown: every image is
    # used at its own scale). Taken from the dataset's dataset.json when the config leaves it 0;
    # saved with the weights' config so prediction can bring slides to the same scale.
    _c.INPUT.PIXEL_SIZE = 0.0
    # Median cell (instance) diameter, in pixels, the model should see: every image is resized by
    # INPUT.SCALE = this / the median equivalent diameter of the DATASETS.TRAIN instances (as
    # Cellpose brings cells to its diameter). 0 = off. Around 32 px suits the cell anchors
    # (MODEL.ANCHOR_GENERATOR.SIZES 8..128); tools/dataset_stats.py suggests a value.
    _c.INPUT.CELL_DIAMETER = 0.0
    # Factor every image is resized by before the model, in training, evaluation and prediction
    # (1.0 = as is); when > 0 it replaces the short-edge resize of INPUT.MIN_SIZE_*/MAX_SIZE_*.
    # 0 = off (the short-edge resize). Computed from INPUT.CELL_DIAMETER when the config is
    # finished for training and saved in the run's config.yaml, so prediction reproduces it;
    # slides are read at INPUT.PIXEL_SIZE / INPUT.SCALE um/px.
    _c.INPUT.SCALE = 0.0
    # Training only, with INPUT.SCALE > 0: each sample's factor is drawn from
    # INPUT.SCALE x U(1 - this, 1 + this) (multi-scale training; 0 = the exact factor).
    _c.INPUT.SCALE_JITTER = 0.1
    _c.INPUT.ELASTIC = CN()
    # Elastic deformation (albumentations ElasticTransform) of image and masks together.
    _c.INPUT.ELASTIC.ENABLED = True
    # Displacement scale in pixels.
    _c.INPUT.ELASTIC.ALPHA = 30.0
    # Gaussian smoothing of the displacement field, in pixels.
    _c.INPUT.ELASTIC.SIGMA = 12.0
    # Probability of applying the deformation to a training sample.
    _c.INPUT.ELASTIC.PROB = 0.3
    _c.INPUT.GEOMETRIC = CN()
    # Probability of a horizontal flip (microscopy has no preferred orientation).
    _c.INPUT.GEOMETRIC.HFLIP_PROB = 0.5
    # Probability of a vertical flip.
    _c.INPUT.GEOMETRIC.VFLIP_PROB = 0.5
    # Probability of a rotation by a random multiple of 90 degrees.
    _c.INPUT.GEOMETRIC.ROT90_PROB = 0.5
    _c.INPUT.STAIN = CN()
    # HED stain jitter for H&E (data/stain.py, as Tellez et al. and tiatoolbox do it): each of
    # the haematoxylin, eosin and DAB concentrations scaled by U(1 - HED_SIGMA, 1 + HED_SIGMA)
    # and shifted by U(-HED_BIAS, HED_BIAS). Image only; off by default (not every dataset is
    # H&E: fluorescence has no such stains).
    _c.INPUT.STAIN.ENABLED = False
    # Probability of jittering a training sample.
    _c.INPUT.STAIN.PROB = 0.5
    # Half-width of the concentration factor's range around 1 (0..1).
    _c.INPUT.STAIN.HED_SIGMA = 0.05
    # Half-width of the concentration shift's range, in natural-log optical density (0..1).
    _c.INPUT.STAIN.HED_BIAS = 0.05
    _c.INPUT.COLOR = CN()
    # Brightness, contrast, saturation and hue jitter (detectron2's Random* and an HSV hue
    # shift), in that order, after the stain jitter. Image only; off by default.
    _c.INPUT.COLOR.ENABLED = False
    # Probability of colour-jittering a training sample.
    _c.INPUT.COLOR.PROB = 0.5
    # Brightness factor range U(1 - x, 1 + x), 0..1 (0 leaves brightness alone).
    _c.INPUT.COLOR.BRIGHTNESS = 0.1
    # Contrast factor range U(1 - x, 1 + x) around the image's mean, 0..1.
    _c.INPUT.COLOR.CONTRAST = 0.1
    # Saturation factor range U(1 - x, 1 + x) around the pixel's grey, 0..1.
    _c.INPUT.COLOR.SATURATION = 0.1
    # Hue shift range U(-x, x) in turns of the colour circle, 0..0.5.
    _c.INPUT.COLOR.HUE = 0.02

    # ---- Model ----
    _c.MODEL.CELLSEG = CN()
    # Probability above which a predicted mask pixel is foreground (detectron2 hard-codes 0.5).
    _c.MODEL.CELLSEG.MASK_THRESHOLD = 0.5
    # Unpickle MODEL.WEIGHTS from outside detectron2's model zoo (pickles run code); only as a
    # command-line override, never from a config file.
    _c.MODEL.CELLSEG.TRUST_PICKLE = False
    # PointRend's keys (MODEL.POINT_HEAD, MODEL.IMPLICIT_POINTREND, the coarse mask head's
    # ROI_MASK_HEAD.IN_FEATURES/FC_DIM/NUM_FC/OUTPUT_SIDE_RESOLUTION/POINT_HEAD_ON, and two INPUT
    # keys of its semantic variant), added by detectron2's own function so the safe loader
    # accepts configs/*pointrend*.yaml. Importing it also registers PointRendMaskHead.
    add_pointrend_config(_c)

    # ---- Solver ----
    # "ADAMW" or "SGD"; anything else raises.
    _c.SOLVER.OPTIMIZER = "SGD"
    # Train for this many epochs over <train> (0 = use SOLVER.MAX_ITER).
    _c.SOLVER.EPOCHS = 0
    # Checkpoint every this many epochs (0 = use SOLVER.CHECKPOINT_PERIOD in iterations).
    _c.SOLVER.CHECKPOINT_PERIOD_EPOCHS = 0.0
    _c.SOLVER.BEST_CHECKPOINT = CN()
    # Evaluation metric that decides model_best.pth ("" disables the best checkpoint).
    _c.SOLVER.BEST_CHECKPOINT.METRIC = "segm/AP"
    # "max" or "min": whether a larger metric is better.
    _c.SOLVER.BEST_CHECKPOINT.MODE = "max"
    # Train for about this many minutes of wall-clock time (0 = off): the first iterations and
    # one evaluation are timed, then MAX_ITER is fitted to the budget and the warm-up, STEPS and
    # the checkpoint and evaluation periods are scaled with it (engine/time_budget.py); the
    # saved config.yaml holds the fitted values.
    _c.SOLVER.TIME_BUDGET_MINUTES = 0.0

    # ---- Test ----
    # Evaluate every this many epochs (0 = use TEST.EVAL_PERIOD in iterations).
    _c.TEST.EVAL_PERIOD_EPOCHS = 0.0
    # Also compute PQ/DQ/SQ, AJI and F1 at IoU > 0.5 (evaluation/histology.py) when evaluating.
    _c.TEST.HISTOLOGY_METRICS = False
    # Images per forward pass in tools/predict.py.
    _c.TEST.IMS_PER_BATCH = 1
    _c.TEST.TILING = CN()
    # Images whose height or width exceeds this run on overlapping tiles (0 = never tile).
    _c.TEST.TILING.MAX_SIZE = 1536
    # Side of a square tile, in pixels.
    _c.TEST.TILING.TILE_SIZE = 1024
    # Overlap between neighbouring tiles, in pixels; larger than the biggest cell.
    _c.TEST.TILING.OVERLAP = 128
    # Processes that outline and measure a whole slide's cells while the model predicts the next
    # tiles (-1 = automatic: none on CPU, where the model uses every core; on a GPU up to 4 of
    # the cores the reading workers leave).
    _c.TEST.SLIDE_CELL_WORKERS = -1


def get_cellseg_cfg() -> CN:
    """Return detectron2's default config extended with :func:`add_cellseg_config`."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_cellseg_config(cfg)
    return cfg
