#!/usr/bin/env python3
"""Train or evaluate a cellseg-d2 model.

    python tools/train_net.py --config-file configs/mask_rcnn_R_50_FPN_cells.yaml
    python tools/train_net.py --config-file C --resume                 # continue after a stop
    python tools/train_net.py --config-file C --eval-only MODEL.WEIGHTS output/x/model_best.pth
    python tools/train_net.py --config-file C --num-gpus 2             # DDP (gloo on CPU)
    python tools/train_net.py --config-file C --overwrite              # retrain into a used dir
    python tools/train_net.py --config-file C SOLVER.TIME_BUDGET_MINUTES 30   # fit to 30 min

An OUTPUT_DIR that already holds checkpoints is refused (exit 2) unless ``--resume`` continues
that run or ``--overwrite`` starts anew over it. Bad configs, data or weights exit 2 with the
file or key named.

The cell datasets named in the config are registered from ``DATASETS.CELLS_ROOT`` (default: the
``CELLSEG_DATASETS`` environment variable, else ``datasets/cells``).
"""

from __future__ import annotations

import argparse
import sys

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import cellseg_d2.modeling  # noqa: F401  (registers CellRCNN)
from cellseg_d2.checkpoint.checkpointer import check_output_dir
from cellseg_d2.config import config_file_keys, finish_config, load_cellseg_config
from cellseg_d2.data.dataset_info import apply_dataset_info
from cellseg_d2.data.register import count_train_images, register_cell_datasets_from_config
from cellseg_d2.data.stats import median_train_diameter
from cellseg_d2.engine import (
    CellTrainer,
    TrainingDivergedError,
    evaluate_weights,
    fit_time_budget,
    prepare_for_launch,
)


def fill_from_dataset(loaded: CfgNode, args: argparse.Namespace) -> CfgNode:
    """``loaded`` completed from the dataset's ``dataset.json`` (class names, class count,
    pixel size) where neither the config files nor the command line chose a value."""
    command_line = [str(key) for key in args.opts[0::2]]
    explicit = {*config_file_keys(args.config_file), *(f"cli:{key}" for key in command_line)}
    return apply_dataset_info(loaded, explicit)


def setup(args: argparse.Namespace) -> CfgNode:
    """Logging, the cell datasets and the finished config of one process, saved by
    ``default_setup`` as ``OUTPUT_DIR/config.yaml`` only once it is the config that runs.

    The log file is set up between loading and finishing so that the schedule rules (epochs to
    iterations, a command-line ``MAX_ITER`` over the file's ``EPOCHS``, a time budget) and the
    input scale (``INPUT.CELL_DIAMETER`` over the median training cell diameter) are logged there
    too.
    """
    loaded = load_cellseg_config(args.config_file, args.opts)
    setup_logger(loaded.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cellseg_d2")
    loaded = fill_from_dataset(loaded, args)
    register_cell_datasets_from_config(loaded)
    cfg = finish_config(
        loaded,
        command_line_keys=args.opts[0::2],
        train_images=None if args.eval_only else count_train_images,
        train_diameter=median_train_diameter,  # INPUT.CELL_DIAMETER -> INPUT.SCALE
        world_size=comm.get_world_size(),
    )
    if not args.eval_only:  # SOLVER.TIME_BUDGET_MINUTES: time, then fit, before it is saved
        cfg = fit_time_budget(cfg, resume=args.resume)
    default_setup(cfg, args)
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


@cli.exit_2_on_bad_input
def run(args: argparse.Namespace) -> int:
    """Launch ``main`` on the requested processes; map user errors to exit codes (bad input 2,
    a diverged run 1)."""
    try:
        loaded = fill_from_dataset(load_cellseg_config(args.config_file, args.opts), args)
        cfg = finish_config(loaded, command_line_keys=args.opts[0::2])
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
    except TrainingDivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(parse_args()))
