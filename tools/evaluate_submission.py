#!/usr/bin/env python3
"""Score a submission against ground-truth masks: COCO AP and the histology PQ, AJI and F1.

Example::

    python tools/evaluate_submission.py --gt datasets/synthetic/test_gt \\
        --id-map datasets/synthetic/test_image_name_to_ids.json --pred output/submission.zip \\
        --json output/scores.json

``--gt`` holds one folder of ``classK.tif`` masks per image (``test_gt/<stem>/`` as the synthetic
generator writes it). Figures are in percent, as detectron2 prints them, with the detection cap
raised to the densest image (pycocotools' ``summarize`` stops at 100). Below the AP table come
panoptic quality PQ (with DQ and SQ, per class and their mean mPQ), aggregated Jaccard index
AJI and F1/precision/recall at IoU > 0.5, of the detections scoring at least ``--score-thresh``
(see :mod:`cellseg_d2.evaluation.histology`); ``--json`` holds them under ``histology``. The
submission is
validated first; exit status 2 means violations or unreadable input, with the file named.
"""

from __future__ import annotations

import argparse
import sys

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.evaluation.histology import evaluate_histology, format_histology
from cellseg_d2.evaluation.scoring import (
    evaluate_submission,
    format_scores,
    load_ground_truth_coco,
    write_scores_json,
)
from cellseg_d2.evaluation.submission_check import require_valid_submission
from cellseg_d2.evaluation.submission_read import read_submission


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; argparse exits with status 2 on bad flags."""
    parser = cli.tool_parser(__doc__)
    parser.add_argument("--gt", required=True, help="folder of <image stem>/classK.tif masks")
    cli.add_submission_arguments(parser)
    parser.add_argument("--json", help="also write the scores to this JSON file")
    cli.add_class_names_argument(parser)
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.5,
        help="smallest score counted by PQ, AJI and F1 (AP uses every detection; default 0.5)",
    )
    return parser.parse_args(argv)


@cli.exit_2_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """Validate, score and print the table; 0 on success, 2 on bad input."""
    args = parse_args(argv)
    cli.log_to_console()
    entries = load_id_map(args.id_map)
    results = read_submission(args.pred, entries)
    require_valid_submission(results, entries, args.pred, args.class_names)
    gt_coco = load_ground_truth_coco(args.gt, entries, args.class_names)
    scores = evaluate_submission(gt_coco, results)
    histology = evaluate_histology(gt_coco, results, args.score_thresh)
    print(format_scores(scores))
    print()
    print(format_histology(histology, args.score_thresh))
    scores["histology"] = histology
    if args.json:
        write_scores_json(scores, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
