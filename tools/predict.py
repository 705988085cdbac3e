#!/usr/bin/env python3
"""Predict a folder of test images into a COCO-results submission and/or per-image exports.

    python tools/predict.py --config-file configs/mask_rcnn_R_50_FPN_cells.yaml \
        --input datasets/cells/test_release --id-map datasets/cells/test_image_name_to_ids.json \
        --output output/submission.zip --zip MODEL.WEIGHTS output/x/model_best.pth

The id map and the folder are checked against each other (missing, unlisted or wrongly sized
images), and the destinations (an --output that is a folder, export names that would collide)
before the model is built; the outputs are then locked (<output>.lock) until the run ends, so a
second run into them is refused. Results are stored image by image in a work folder beside the
main output (<output>.partial/, or <output-dir>.partial/ without coco) and assembled at the end,
each shard checked, so an interrupted run continues with --resume. Exit status: 0 ok, 2 bad input
or output in use (the file is named), 130 interrupted (finished images kept).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from detectron2.utils.logger import setup_logger

import cellseg_d2.modeling  # noqa: F401  (registers CellRCNN)
from cellseg_d2.data.validate import check_test_images, list_tiff_images
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference import CellPredictor
from cellseg_d2.inference.export import EXPORT_FORMATS
from cellseg_d2.inference.outputs import check_output_paths, claim_outputs
from cellseg_d2.inference.predict import MAX_ID_MAP_BYTES, build_predict_config, predict_to_files
from cellseg_d2.inference.shards import prediction_fingerprint, work_dir_for
from cellseg_d2.utils.files import check_file_size

EXIT_INTERRUPTED = 130
logger = logging.getLogger("cellseg_d2.predict")

FORMAT_HELP = (
    "comma-separated (or repeated), any of: coco (the submission, --output; default), "
    "labels (per image labels/<stem>_instances.tif, uint16/uint32 ids 1..n, higher score wins "
    "on overlap, and labels/<stem>_classes.tif), geojson (per image geojson/<stem>.geojson, "
    "QuPath detections), csv (cells.csv, one row per cell of the label image); all but coco go "
    "to --output-dir"
)


def _formats(text: str) -> list[str]:
    """Parse ``--format coco,labels``: a comma-separated list of known formats."""
    formats = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in formats if name not in EXPORT_FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(unknown) or repr(text)}; choose from "
            f"{', '.join(EXPORT_FORMATS)}"
        )
    return formats


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; trailing ``KEY VALUE`` pairs override the config."""
    parser = cli.tool_parser(__doc__)
    cli.add_config_arguments(parser)
    parser.add_argument("--input", required=True, help="folder of test images (.tif)")
    cli.add_submission_arguments(parser, pred=False)
    parser.add_argument("--output", help="submission: results .json, or .zip with --zip (coco)")
    parser.add_argument("--zip", action="store_true", help="write a zip holding test-results.json")
    parser.add_argument("--format", type=_formats, action="extend", help=FORMAT_HELP)
    parser.add_argument("--output-dir", help="folder for the labels, geojson and csv formats")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted or stopped run from its work folder, predicting only the "
        "images it has not finished (refused if config, weights or thresholds differ)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="log and skip unreadable images (listed in <output>.skipped.txt) instead of "
        "stopping with exit 2",
    )
    parser.add_argument("--tta", action="store_true", help="flip/scale test-time augmentation")
    parser.add_argument("--score-thresh", type=float, help="MODEL.ROI_HEADS.SCORE_THRESH_TEST")
    parser.add_argument("--mask-thresh", type=float, help="MODEL.CELLSEG.MASK_THRESHOLD")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    args.format = list(dict.fromkeys(args.format or ["coco"]))
    if "coco" in args.format and not args.output:
        parser.error("the coco format needs --output")
    if "coco" not in args.format and args.output:
        parser.error("--output is the coco submission; add coco to --format or drop --output")
    if set(args.format) - {"coco"} and not args.output_dir:
        parser.error("the labels, geojson and csv formats need --output-dir")
    return args


@cli.exit_2_on_bad_input
def main(args: argparse.Namespace) -> int:
    """Check inputs, predict image by image into the work folder, assemble the outputs."""
    setup_logger(name="cellseg_d2")
    setup_logger(name="detectron2")
    main_output = args.output if "coco" in args.format else args.output_dir
    output = Path(args.output) if args.output else None
    output_dir = Path(args.output_dir) if args.output_dir else None
    try:
        check_output_paths(output, output_dir)
        cfg = build_predict_config(args.config_file, args.opts, args.score_thresh, args.mask_thresh)
        input_dir = Path(args.input)
        if not input_dir.is_dir():
            raise CellDataError(f"{input_dir}: input folder not found")
        check_file_size(args.id_map, MAX_ID_MAP_BYTES, "id map")
        entries = check_test_images(args.id_map, list_tiff_images(input_dir))
        # Claimed before the model is built: a second run into this output stops at once.
        with claim_outputs(entries, args.format, output, output_dir):
            predictor = CellPredictor(cfg, tta=args.tta)
            start = time.perf_counter()
            summary = predict_to_files(
                predictor,
                input_dir,
                entries,
                formats=args.format,
                fingerprint=prediction_fingerprint(cfg, args.tta, args.format, entries),
                class_names=cfg.DATASETS.CLASS_NAMES,
                output=output,
                zip_output=args.zip,
                output_dir=output_dir,
                resume=args.resume,
                skip_bad=args.skip_bad,
                progress=not args.no_progress,
            )
            elapsed = time.perf_counter() - start
    except KeyboardInterrupt:
        print(
            f"interrupted: finished images are kept in {work_dir_for(main_output)}; "
            "rerun the same command with --resume to continue",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    logger.info(
        "%d detections on %d images in %.1f s (%.2f s/image; %d resumed) -> %s",
        summary.detections,
        summary.predicted,
        elapsed,
        elapsed / max(1, summary.predicted),
        summary.resumed,
        ", ".join(str(path) for path in (args.output, args.output_dir) if path),
    )
    if summary.skipped:
        names = "\n  ".join(name for name, _ in summary.skipped)
        print(f"skipped {len(summary.skipped)} unreadable image(s):\n  {names}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
