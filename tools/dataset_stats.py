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
import sys

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from cellseg_d2.config import default_cells_root
from cellseg_d2.data.stats import compute_dataset_stats, format_stats, write_stats_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; argparse exits with status 2 on bad flags."""
    parser = cli.tool_parser(__doc__)
    cli.add_dataset_arguments(parser, default_cells_root())
    parser.add_argument("--json", help="also write the statistics to this JSON file")
    return parser.parse_args(argv)


@cli.exit_2_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """Compute, print and optionally save the statistics; 0 on success, 2 on bad data."""
    args = parse_args(argv)
    cli.log_to_console()
    stats = compute_dataset_stats(args.root, args.min_area, args.class_names)
    print(format_stats(stats))
    if args.json:
        write_stats_json(stats, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
