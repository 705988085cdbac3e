#!/usr/bin/env python3
"""Draw images beside their predictions (and ground truth) into one PNG for the report.

Example::

    python tools/visualize.py --input datasets/synthetic/test_release \\
        --id-map datasets/synthetic/test_image_name_to_ids.json --pred output/submission.zip \\
        --gt datasets/synthetic/test_gt --output output/predictions.png --num-images 4

Predictions come from a submission (``--pred``) or from a model run on the drawn images
(``--config-file`` with ``MODEL.WEIGHTS`` among the trailing ``KEY VALUE`` overrides).
``--val-root DIR`` draws the validation images of a dataset root (the split training uses)
beside their ground truth, with the dataset's own settings: the config's ``DATASETS.*`` (class
names, validation fraction, split seed, folds) with ``--config-file``, else ``--class-names`` or
the class names its training cache recorded; the cache is only read, never written.
One row per image (the first ``--num-images`` of the id map by id): original | ground truth
(with ``--gt``) | predictions at or above ``--score-thresh``, masks in class colours with boxes,
class names and scores; ``--style outlines`` draws only class-coloured cell outlines and adds a
per-class count strip (ground truth vs predictions) under each row. The submission is validated
first; exit status 2 means violations or
unreadable input, with the file named.

A whole slide's cells are drawn from its cell store instead (``predict.py`` wrote it beside the
GeoJSON): ``--slide SLIDE --cells STEM.cells.sqlite --region X,Y,W,H [--downsample D]`` outlines
every cell of a level-0 region in its class colour over the slide's pixels::

    python tools/visualize.py --slide slides/cmu-1-small-region.svs \\
        --cells output/slides/cmu-1-small-region.cells.sqlite --region 0,0,2220,2967 \\
        --downsample 2 --output output/slides/cells.png
"""

from __future__ import annotations

import argparse
import os
import sys

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from detectron2.config import CfgNode

import cellseg_d2.modeling  # noqa: F401  (registers CellRCNN)
from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.evaluation.submission import group_by_image
from cellseg_d2.evaluation.submission_check import require_valid_submission
from cellseg_d2.evaluation.submission_read import read_submission
from cellseg_d2.inference.figures import STYLES, write_png
from cellseg_d2.inference.predict import build_predict_config, predict_folder
from cellseg_d2.inference.predictor import CellPredictor
from cellseg_d2.inference.slide_figure import render_slide_region
from cellseg_d2.inference.visualize import (
    recorded_class_names,
    validation_id_map,
    visualize_predictions,
)
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES, TRAIN_DIR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; argparse exits with status 2 on bad values."""
    parser = cli.tool_parser(__doc__)
    parser.add_argument("--input", help="folder of the images (test_release/)")
    parser.add_argument("--id-map", help="test_image_name_to_ids.json")
    parser.add_argument(
        "--val-root",
        help="instead of --input/--id-map/--gt: draw the validation images of this dataset root "
        "beside their ground truth (the config's DATASETS split and class names, else the "
        "flags, else the class names its training cache recorded; the cache is never written)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        help="DATASETS.VAL_FRACTION (default: the config's, else 0.1)",
    )
    parser.add_argument(
        "--split-seed", type=int, help="DATASETS.SPLIT_SEED (default: the config's, else 0)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--pred", help="submission: results JSON or zip")
    source.add_argument("--config-file", help="predict with this config (and MODEL.WEIGHTS)")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--gt", help="ground-truth mask folders (test_gt/ or train/)")
    parser.add_argument("--num-images", type=int, default=4, help="rows (default 4)")
    parser.add_argument(
        "--score-thresh", type=float, default=0.5, help="smallest score drawn (default 0.5)"
    )
    parser.add_argument(
        "--style",
        choices=STYLES,
        default="boxes",
        help="boxes: filled masks, boxes and labels (default); outlines: class-coloured "
        "outlines only, plus per-class count bars",
    )
    cli.add_class_names_argument(parser, default=None)  # None: not given (see dataset_settings)
    parser.add_argument("--slide", help="instead: a whole slide, drawn with --cells and --region")
    parser.add_argument("--cells", help="--slide: the slide's cell store (.cells.sqlite)")
    parser.add_argument("--region", help="--slide: X,Y,WIDTH,HEIGHT in level-0 pixels")
    parser.add_argument(
        "--downsample", type=float, default=1.0, help="--slide: level-0 pixels per figure pixel"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.slide:
        if not (args.cells and args.region):
            parser.error("--slide needs --cells and --region")
        try:
            args.region = tuple(int(v) for v in args.region.split(","))
        except ValueError:
            parser.error("--region: four whole numbers X,Y,WIDTH,HEIGHT")
        if len(args.region) != 4:
            parser.error("--region: four whole numbers X,Y,WIDTH,HEIGHT")
        return args
    if not (args.pred or args.config_file):
        parser.error("one of the arguments --pred --config-file is required")
    if args.val_root:
        if args.input or args.id_map or args.gt:
            parser.error("--val-root replaces --input, --id-map and --gt")
        args.input = args.gt = os.path.join(args.val_root, TRAIN_DIR)
    elif not (args.input and args.id_map):
        parser.error("give --input and --id-map, or --val-root")
    if args.opts and not args.config_file:
        parser.error("KEY VALUE overrides need --config-file")
    if args.num_images < 1:
        parser.error("--num-images must be >= 1")
    return args


def dataset_settings(args: argparse.Namespace, cfg: CfgNode | None) -> None:
    """Settle the class names and, with ``--val-root``, the split: the dataset's own settings.

    Why: a figure of a dataset must follow the settings it was trained with, or it draws other
    images than the validation split, or stops on a sixth class. Class names: the config's
    ``DATASETS.CLASS_NAMES``, else ``--class-names``, else (``--val-root``) the names the
    dataset's training cache recorded (read only), else the default four. Split: the flags, else
    the config's ``DATASETS.VAL_FRACTION``/``SPLIT_SEED``/``NUM_FOLDS``/``FOLD``, else 0.1 and
    seed 0. Sets ``args.class_names`` and ``args.split`` (keyword arguments of
    :func:`validation_id_map`)."""
    datasets = cfg.DATASETS if cfg is not None else None
    if datasets is not None:
        args.class_names = tuple(datasets.CLASS_NAMES)
    elif args.class_names is None:
        args.class_names = recorded_class_names(args.val_root) if args.val_root else None
    args.class_names = args.class_names or DEFAULT_CLASS_NAMES
    if not args.val_root:
        return
    num_folds = int(datasets.NUM_FOLDS) if datasets is not None else 0
    fraction = datasets.VAL_FRACTION if datasets is not None else 0.1
    seed = datasets.SPLIT_SEED if datasets is not None else 0
    args.split = {
        "val_fraction": float(fraction if args.val_fraction is None else args.val_fraction),
        "seed": int(seed if args.split_seed is None else args.split_seed),
        "fold": int(datasets.FOLD) if num_folds else None,
        "num_folds": num_folds or None,
        "class_names": args.class_names,
    }


def predict_entries(args: argparse.Namespace, cfg: CfgNode, entries: list[dict]) -> list[dict]:
    """Run the configured model on the images that will be drawn, as submission entries."""
    drawn = sorted(entries, key=lambda entry: entry["id"])[: args.num_images]
    return predict_folder(CellPredictor(cfg), args.input, drawn, progress=False)


@cli.exit_2_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """Validate the submission and write the figure; 0 on success, 2 on bad input."""
    args = parse_args(argv)
    cli.log_to_console()
    if args.slide:
        figure, drawn = render_slide_region(args.slide, args.cells, args.region, args.downsample)
        write_png(figure, args.output)
        print(f"{args.output}: {drawn} cells over {args.slide} region {args.region}")
        return 0
    # The model's own thresholds and the dataset's settings come from the config.
    cfg = build_predict_config(args.config_file, args.opts) if args.config_file else None
    dataset_settings(args, cfg)
    if args.val_root:
        entries = validation_id_map(args.val_root, **args.split)
    else:
        entries = load_id_map(args.id_map)
    if cfg is not None:
        results = predict_entries(args, cfg, entries)
    else:
        results = read_submission(args.pred, entries)
    source = args.pred or "the model's predictions"
    require_valid_submission(results, entries, source, args.class_names)
    drawing = cli.flags(args, "num_images", "score_thresh", "style", "class_names")
    visualize_predictions(
        args.input, entries, group_by_image(results), args.output, gt_dir=args.gt, **drawing
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
