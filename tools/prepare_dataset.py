#!/usr/bin/env python3
"""Validate a cell dataset folder and build its COCO-JSON cache.

Example::

    python tools/prepare_dataset.py --root datasets/cells

Checks the layout, decodes every image and mask once, writes ``.cellseg_cache/instances_train.json``
and ``.cellseg_cache/test_images.json`` under the root and prints a summary. A fresh cache is
reused. Exit status 2 means bad data; the message names the file. ``--strict`` also fails on
warnings (e.g. a training image without masks). ``--class-names`` must match the training
config's ``DATASETS.CLASS_NAMES`` (masks ``class1.tif``..``classN.tif``), and ``--max-instances``
its ``DATASETS.MAX_INSTANCES_PER_IMAGE`` when that is not the default.
"""

from __future__ import annotations

import argparse
import sys

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from cellseg_d2.config import default_cells_root
from cellseg_d2.data.limits import DEFAULT_MAX_INSTANCES_PER_IMAGE
from cellseg_d2.data.prepare import format_summary, prepare_cell_dataset
from cellseg_d2.data.validate import DEFAULT_MIN_IMAGE_SIZE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; argparse exits with status 2 on bad flags."""
    parser = cli.tool_parser(__doc__)
    cli.add_dataset_arguments(parser, default_cells_root())
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors")
    parser.add_argument(
        "--min-size",
        type=int,
        default=DEFAULT_MIN_IMAGE_SIZE,
        help=f"reject images with a side below this (default {DEFAULT_MIN_IMAGE_SIZE})",
    )
    parser.add_argument(
        "--max-instances",
        type=int,
        default=DEFAULT_MAX_INSTANCES_PER_IMAGE,
        help="refuse a training image with more instance ids, all masks together (default "
        f"{DEFAULT_MAX_INSTANCES_PER_IMAGE}; the config's DATASETS.MAX_INSTANCES_PER_IMAGE)",
    )
    args = parser.parse_args(argv)
    if args.min_size < 1 or args.max_instances < 1:
        parser.error("--min-size and --max-instances must be >= 1")
    return args


@cli.exit_2_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """Run the preparation; return 0 on success, 2 on bad data."""
    args = parse_args(argv)
    cli.log_to_console()
    summary = prepare_cell_dataset(
        args.root,
        args.min_area,
        args.min_size,
        args.strict,
        args.class_names,
        max_instances=args.max_instances,
    )
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
