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
import logging
import sys

from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.histology import evaluate_histology, format_histology
from cellseg_d2.evaluation.scoring import (
    evaluate_submission,
    format_scores,
    load_ground_truth_coco,
    write_scores_json,
)
from cellseg_d2.evaluation.submission_check import require_valid_submission
from cellseg_d2.evaluation.submission_read import read_submission
from cellseg_d2.utils.cli import add_class_names_argument


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; argparse exits with status 2 on bad flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gt", required=True, help="folder of <image stem>/classK.tif masks")
    parser.add_argument("--id-map", required=True, help="test_image_name_to_ids.json")
    parser.add_argument("--pred", required=True, help="submission: results JSON or zip")
    parser.add_argument("--json", help="also write the scores to this JSON file")
    add_class_names_argument(parser)
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.5,
        help="smallest score counted by PQ, AJI and F1 (AP uses every detection; default 0.5)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Validate, score and print the table; 0 on success, 2 on bad input."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        entries = load_id_map(args.id_map)
        results = read_submission(args.pred, entries)
        require_valid_submission(results, entries, args.pred, args.class_names)
        gt_coco = load_ground_truth_coco(args.gt, entries)
        scores = evaluate_submission(gt_coco, results)
        histology = evaluate_histology(gt_coco, results, args.score_thresh)
    except CellDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_scores(scores))
    print()
    print(format_histology(histology, args.score_thresh))
    scores["histology"] = histology
    if args.json:
        write_scores_json(scores, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
