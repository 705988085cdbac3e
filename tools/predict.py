#!/usr/bin/env python3
"""Predict a folder of test images into a COCO-results submission (JSON, or a CodaBench zip).

    python tools/predict.py --config-file configs/mask_rcnn_R_50_FPN_cells.yaml \
        --input datasets/cells/test_release --id-map datasets/cells/test_image_name_to_ids.json \
        --output output/submission.zip --zip MODEL.WEIGHTS output/x/model_best.pth

The id map and the folder are checked against each other (missing, unlisted or wrongly sized
images) before the model is built. Exit status: 0 ok, 2 bad input (the file is named).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from detectron2.utils.logger import setup_logger

import cellseg_d2.modeling  # noqa: F401  (registers CellRCNN)
from cellseg_d2.data import CellDataError
from cellseg_d2.data.validate import check_test_images, list_tiff_images
from cellseg_d2.errors import CellSegError
from cellseg_d2.inference import CellPredictor, predict_folder, write_submission
from cellseg_d2.inference.predict import build_predict_config

EXIT_BAD_INPUT = 2
logger = logging.getLogger("cellseg_d2.predict")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; trailing ``KEY VALUE`` pairs override the config."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="model config (YAML)")
    parser.add_argument("--input", required=True, help="folder of test images (.tif)")
    parser.add_argument("--id-map", required=True, help="test_image_name_to_ids.json")
    parser.add_argument("--output", required=True, help="results .json, or .zip with --zip")
    parser.add_argument("--zip", action="store_true", help="write a zip holding test-results.json")
    parser.add_argument("--tta", action="store_true", help="flip/scale test-time augmentation")
    parser.add_argument("--score-thresh", type=float, help="MODEL.ROI_HEADS.SCORE_THRESH_TEST")
    parser.add_argument("--mask-thresh", type=float, help="MODEL.CELLSEG.MASK_THRESHOLD")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    """Check inputs, predict, write the submission atomically."""
    setup_logger(name="cellseg_d2")
    setup_logger(name="detectron2")
    try:
        cfg = build_predict_config(args.config_file, args.opts, args.score_thresh, args.mask_thresh)
        input_dir = Path(args.input)
        if not input_dir.is_dir():
            raise CellDataError(f"{input_dir}: input folder not found")
        entries = check_test_images(args.id_map, list_tiff_images(input_dir))
        predictor = CellPredictor(cfg, tta=args.tta)
        start = time.perf_counter()
        results = predict_folder(predictor, input_dir, entries, progress=not args.no_progress)
        elapsed = time.perf_counter() - start
        write_submission(results, args.output, zip_output=args.zip)
    except CellSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logger.info(
        "%d detections on %d images in %.1f s (%.2f s/image) -> %s",
        len(results),
        len(entries),
        elapsed,
        elapsed / max(1, len(entries)),
        args.output,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
