#!/usr/bin/env python3
"""Print statistics of a cell dataset and the config values they suggest.

Example::

    python tools/dataset_stats.py --root datasets/cells --json output/dataset_stats.json

Reports images, instances per class and per image, instance areas and equivalent diameters per
class, image sizes, and advice for ``MODEL.ANCHOR_GENERATOR.SIZES``,
``TEST.DETECTIONS_PER_IMAGE`` and the RPN's test-time top-k. Reads the conversion cache (built on
first use). Classes are reported by name: pass ``--class-names`` as in the training config's
``DATASETS.CLASS_NAMES``. Exit status 2 means bad data; the message names the file.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cellseg_d2.config import default_cells_root
from cellseg_d2.data.stats import compute_dataset_stats, format_stats, write_stats_json
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.cli import add_class_names_argument


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; argparse exits with status 2 on bad flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", default=default_cells_root(), help="dataset root (default: $CELLSEG_DATASETS)"
    )
    parser.add_argument("--json", help="also write the statistics to this JSON file")
    add_class_names_argument(parser)
    parser.add_argument(
        "--min-area", type=int, default=4, help="ignore instances with fewer pixels (default 4)"
    )
    args = parser.parse_args(argv)
    if args.min_area < 0:
        parser.error("--min-area must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Compute, print and optionally save the statistics; 0 on success, 2 on bad data."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        stats = compute_dataset_stats(args.root, args.min_area, args.class_names)
    except CellDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_stats(stats))
    if args.json:
        write_stats_json(stats, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
