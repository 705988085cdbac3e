#!/usr/bin/env python3
"""Train or evaluate a cellseg-d2 model.

    python tools/train_net.py --config-file configs/mask_rcnn_R_50_FPN_cells.yaml
    python tools/train_net.py --config-file C --resume                 # continue after a stop
    python tools/train_net.py --config-file C --eval-only MODEL.WEIGHTS output/x/model_best.pth
    python tools/train_net.py --config-file C --num-gpus 2             # DDP (gloo on CPU)
    python tools/train_net.py --config-file C --overwrite              # retrain into a used dir

An OUTPUT_DIR that already holds checkpoints is refused (exit 2) unless ``--resume`` continues
that run or ``--overwrite`` starts anew over it. Bad configs, data or weights exit 2 with the
file or key named.

The cell datasets named in the config are registered from ``DATASETS.CELLS_ROOT`` (default: the
``CELLSEG_DATASETS`` environment variable, else ``datasets/cells``).
"""

from __future__ import annotations

import argparse
import sys

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import cellseg_d2.modeling  # noqa: F401  (registers CellRCNN)
from cellseg_d2.checkpoint.checkpointer import check_output_dir
from cellseg_d2.config import adapt_config_to_machine, load_cellseg_config
from cellseg_d2.data import register_cell_datasets_from_config
from cellseg_d2.engine import (
    CellTrainer,
    TrainingDivergedError,
    evaluate_weights,
    prepare_for_launch,
)
from cellseg_d2.errors import CellSegError

EXIT_BAD_INPUT = 2


def build_config(args: argparse.Namespace) -> CfgNode:
    """The frozen config from the file and the overrides, adapted to this machine."""
    cfg = adapt_config_to_machine(load_cellseg_config(args.config_file, args.opts))
    cfg.freeze()
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    """Config, logging and output folder of one process; registers the cell datasets."""
    cfg = build_config(args)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cellseg_d2")
    register_cell_datasets_from_config(cfg)
    return cfg


def main(args: argparse.Namespace) -> dict | None:
    """Train (optionally resuming) or, with ``--eval-only``, evaluate ``MODEL.WEIGHTS``."""
    cfg = setup(args)
    if args.eval_only:
        return evaluate_weights(cfg)
    trainer = CellTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """detectron2's training flags plus ``--overwrite``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train from MODEL.WEIGHTS into an OUTPUT_DIR that holds checkpoints, replacing them",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Launch ``main`` on the requested processes; map user errors to exit codes."""
    try:
        cfg = build_config(args)
        # Evaluation writes only its results into OUTPUT_DIR: it needs a usable folder, and
        # checkpoints there are no reason to stop.
        resume = args.resume or args.eval_only
        check_output_dir(cfg.OUTPUT_DIR, resume=resume, overwrite=args.overwrite)
        if args.num_gpus * args.num_machines > 1:
            prepare_for_launch(cfg, resume=args.resume, eval_only=args.eval_only)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except CellSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(parse_args()))
