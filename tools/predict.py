#!/usr/bin/env python3
"""Predict images and whole slides into a COCO submission and/or label images, GeoJSON and CSV.

    python tools/predict.py --config-file configs/mask_rcnn_R_50_FPN_cells.yaml \
        --input datasets/cells/test_release --id-map datasets/cells/test_image_name_to_ids.json \
        --output output/submission.zip --zip MODEL.WEIGHTS output/x/model_best.pth
    python tools/predict.py --config-file output/x/config.yaml --input scans/ \
        --format geojson,csv --output-dir cells/ MODEL.WEIGHTS output/x/model_best.pth
    python tools/predict.py --model exported/ --input crops/ --format labels --output-dir out/

--input is a folder, one file or a list file (.txt, a path per line) of TIFF/PNG/JPEG images and
whole slides (.svs, .ndpi, .mrxs, .scn, DICOM, pyramidal TIFF/OME-TIFF). Without --id-map the
images are numbered in sorted name order (written beside the output as image_ids.json). Slides
are read tile by tile at the model's pixel size (INPUT.PIXEL_SIZE; --pixel-size when the file
has none), background skipped by a tissue mask, and written as GeoJSON and CSV in level-0
pixels (with --format labels also as a tiled pyramidal OME-TIFF of labels). Everything is
checked before the model is built; the outputs are locked while the run writes them; images
are stored one by one in <output>.partial/ and slides chunk by chunk, so an interrupted run
continues with --resume. Exit status: 0 ok, 2 bad input or output in use (the file is
named), 130 interrupted (finished work kept).
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
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.export import EXPORT_FORMATS
from cellseg_d2.inference.predict import build_predict_config
from cellseg_d2.inference.predict_run import PredictionRun, run_prediction
from cellseg_d2.inference.shards import work_dir_for

EXIT_INTERRUPTED = 130
logger = logging.getLogger("cellseg_d2.predict")

FORMAT_HELP = (
    "comma-separated (or repeated), any of: coco (the submission, --output; default), "
    "labels (per image labels/<stem>_instances.tif, uint16/uint32 ids 1..n = cell_id, higher "
    "score wins on overlap, and labels/<stem>_classes.tif; per slide <stem>.labels.ome.tif, "
    "a tiled pyramid of cell_id and class_id), geojson (per image or slide "
    "<stem>.geojson, QuPath detections), csv (cells.csv per run, <slide>.cells.csv per slide); "
    "all but coco go to --output-dir"
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


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Resume, bad images, TTA, thresholds, overlaps, progress."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted or stopped run from its work folder (slides: their cell "
        "stores), predicting only what it has not finished (refused if config, weights or "
        "thresholds differ)",
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
    parser.add_argument(
        "--keep-overlaps",
        action="store_true",
        help="geojson and csv: every detection with its own (overlapping) mask instead of the "
        "label image's cells; the files say so",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_slide_and_launch_flags(parser: argparse.ArgumentParser) -> None:
    """Pixel size, tissue mask, and detectron2's launch flags."""
    parser.add_argument(
        "--pixel-size",
        type=float,
        help="um per pixel of the slides (level 0), instead of (or where missing) their metadata",
    )
    parser.add_argument(
        "--tissue",
        default="auto",
        help="slides: 'auto' (Otsu tissue mask on a thumbnail; background never read), 'none', "
        "or a mask image (any size, >0 = tissue)",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's rank")
    parser.add_argument(
        "--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 (several machines)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; trailing ``KEY VALUE`` pairs override the config."""
    parser = cli.tool_parser(__doc__)
    cli.add_config_arguments(parser, required=False)
    parser.add_argument(
        "--model", help="an exported model folder (tools/export_model.py) instead of a config"
    )
    parser.add_argument(
        "--input", required=True, help="folder, file or list file (.txt) of images and slides"
    )
    parser.add_argument(
        "--id-map", help="test_image_name_to_ids.json (default: ids in sorted name order)"
    )
    parser.add_argument("--output", help="submission: results .json, or .zip with --zip (coco)")
    parser.add_argument("--zip", action="store_true", help="write a zip holding test-results.json")
    parser.add_argument("--format", type=_formats, action="extend", help=FORMAT_HELP)
    parser.add_argument("--output-dir", help="folder for the labels, geojson and csv formats")
    _add_run_flags(parser)
    _add_slide_and_launch_flags(parser)
    args = parser.parse_args(argv)
    args.format = list(dict.fromkeys(args.format or ["coco"]))
    if bool(args.config_file) == bool(args.model):
        parser.error("give --config-file (with MODEL.WEIGHTS) or --model (an exported folder)")
    if args.model and args.opts:
        parser.error("config overrides go with --config-file, not with --model")
    if "coco" in args.format and not args.output:
        parser.error("the coco format needs --output")
    if "coco" not in args.format and args.output:
        parser.error("--output is the coco submission; add coco to --format or drop --output")
    if set(args.format) - {"coco"} and not args.output_dir:
        parser.error("the labels, geojson and csv formats need --output-dir")
    return args


def _run_request(args: argparse.Namespace) -> PredictionRun:
    """The flags as the package's run description."""
    return PredictionRun(
        source=Path(args.input),
        formats=tuple(args.format),
        output=Path(args.output) if args.output else None,
        output_dir=Path(args.output_dir) if args.output_dir else None,
        id_map=Path(args.id_map) if args.id_map else None,
        zip_output=args.zip,
        progress=not args.no_progress,
        **cli.flags(
            args, "resume", "skip_bad", "tta", "keep_overlaps", "pixel_size", "tissue",
            "num_gpus", "num_machines", "machine_rank", "dist_url",
        ),
    )  # fmt: skip


@cli.exit_2_on_bad_input
def main(args: argparse.Namespace) -> int:
    """Check everything, predict images and slides, write the outputs."""
    setup_logger(name="cellseg_d2")
    setup_logger(name="detectron2")
    run = _run_request(args)
    start = time.perf_counter()
    try:
        cfg = None
        if args.config_file:
            cfg = build_predict_config(
                args.config_file, args.opts, args.score_thresh, args.mask_thresh
            )
        elif args.score_thresh is not None or args.mask_thresh is not None:
            raise CellDataError(f"{args.model}: thresholds of an exported model are in it")
        report = run_prediction(run, cfg, Path(args.model) if args.model else None)
    except KeyboardInterrupt:
        main_output = args.output if "coco" in args.format else args.output_dir
        print(
            f"interrupted: finished work is kept ({work_dir_for(main_output)} for images, the "
            ".cells.sqlite.partial stores and .partial.d chunk folders for slides); rerun the same "
            "command with --resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    elapsed = time.perf_counter() - start
    summary = report.images
    if summary is not None:
        logger.info(
            "%d detections on %d images (%d resumed) -> %s",
            summary.detections,
            summary.predicted,
            summary.resumed,
            ", ".join(str(path) for path in (args.output, args.output_dir) if path),
        )
        if summary.skipped:
            names = "\n  ".join(name for name, _ in summary.skipped)
            print(
                f"skipped {len(summary.skipped)} unreadable image(s):\n  {names}", file=sys.stderr
            )
    logger.info("Done in %.1f s", elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
