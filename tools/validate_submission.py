#!/usr/bin/env python3
"""Check a submission (JSON or CodaBench zip) against the test id map before uploading it.

Example::

    python tools/validate_submission.py --id-map datasets/cells/test_image_name_to_ids.json \\
        --pred output/submission.zip

Prints detections per image and per class and every violation (unknown image id, category
outside 1..N for the N ``--class-names``, mask size different from the image, box outside the
image or away from its mask, score not in [0, 1]); see
:func:`cellseg_d2.evaluation.submission_check.validate_submission`. Exit status 0 means the
submission is valid, 2 that it has violations or a file is unreadable.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.evaluation.submission_check import format_report, validate_submission
from cellseg_d2.evaluation.submission_read import read_submission


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; argparse exits with status 2 on bad flags."""
    parser = cli.tool_parser(__doc__)
    cli.add_submission_arguments(parser)
    cli.add_class_names_argument(parser)
    parser.add_argument(
        "--max-violations", type=int, default=20, help="list at most this many (default 20)"
    )
    return parser.parse_args(argv)


@cli.exit_2_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """Validate and print the report; 0 when valid, 2 on violations or unreadable input."""
    args = parse_args(argv)
    cli.log_to_console(level=logging.WARNING)
    entries = load_id_map(args.id_map)
    results = read_submission(args.pred, entries)
    report = validate_submission(results, entries, len(args.class_names))
    print(format_report(report, args.max_violations, args.class_names))
    if not report.ok:
        print(f"error: {args.pred}: {len(report.violations)} violation(s)", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
