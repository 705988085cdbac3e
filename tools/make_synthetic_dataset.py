#!/usr/bin/env python3
"""Write a synthetic H&E-like cell dataset in the real dataset's layout.

Why: the tests and the demo need data that looks and is laid out like the real MoNuSAC-style
export, without shipping or downloading it. The same arguments always give identical files.

Example::

    python tools/make_synthetic_dataset.py --output datasets/synthetic \\
        --num-train 20 --num-test 5 --seed 0

Writes ``train/<uuid>/{image,classK}.tif``, ``test_release/<uuid>.tif``,
``test_image_name_to_ids.json`` and ``test_gt/<uuid>/classK.tif`` under ``--output`` (see
:mod:`cellseg_d2.data.synthetic`); ``--num-classes N`` writes ``class1.tif``..``classN.tif``
(train with N names in ``DATASETS.CLASS_NAMES`` and ``MODEL.ROI_HEADS.NUM_CLASSES N``). Exit
status 2 means bad arguments or an existing dataset in the output folder (pass ``--overwrite``
to replace it).
"""

from __future__ import annotations

import argparse
import logging
import sys

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from cellseg_d2.data.synthetic import MAX_CLASSES, MIN_IMAGE_SIZE, generate_synthetic_dataset

logger = logging.getLogger("make_synthetic_dataset")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; bad values end the program with status 2.

    Why: argparse's own ``error`` gives the usual usage message and exit status 2, which scripts
    can tell apart from a crash.
    """
    parser = cli.tool_parser(__doc__)
    parser.add_argument("--output", required=True, help="dataset root folder to write")
    parser.add_argument("--num-train", type=int, default=20, help="training images (default 20)")
    parser.add_argument("--num-test", type=int, default=5, help="test images (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    parser.add_argument("--min-size", type=int, default=256, help="smallest image side (256)")
    parser.add_argument("--max-size", type=int, default=512, help="largest image side (512)")
    parser.add_argument(
        "--num-classes", type=int, default=4, help=f"classes, 1..{MAX_CLASSES} (default 4)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset already in --output"
    )
    args = parser.parse_args(argv)
    if args.num_train < 0 or args.num_test < 0:
        parser.error("--num-train and --num-test must be >= 0")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if not 1 <= args.num_classes <= MAX_CLASSES:
        parser.error(f"--num-classes must be in 1..{MAX_CLASSES}")
    if args.min_size < MIN_IMAGE_SIZE or args.max_size < MIN_IMAGE_SIZE:
        parser.error(f"--min-size and --max-size must be at least {MIN_IMAGE_SIZE} pixels")
    if args.min_size > args.max_size:
        parser.error(f"--min-size ({args.min_size}) is larger than --max-size ({args.max_size})")
    return args


@cli.exit_2_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """Generate the dataset and log a summary.

    Why: a thin wrapper so that the logic lives (and is tested) in the package.

    Returns:
        The exit status: 0 on success, 2 when the output folder already holds a dataset.
    """
    args = parse_args(argv)
    cli.log_to_console()
    names = ("num_train", "num_test", "seed", "min_size", "max_size", "overwrite", "num_classes")
    summary = generate_synthetic_dataset(args.output, **cli.flags(args, *names))
    logger.info(
        "%d images (%d dense), instances per class %s, at most %d cells in an image",
        summary["images"],
        summary["dense_images"],
        summary["instances_per_class"],
        summary["max_cells_per_image"],
    )
    logger.info("dataset written to %s", summary["output"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
