#!/usr/bin/env python3
"""Export a trained model to TorchScript or ONNX, with a metadata.json that says how to run it.

    python tools/export_model.py --config-file configs/mask_rcnn_R_50_FPN_cells.yaml \
        --format onnx --output output/exported_onnx MODEL.WEIGHTS output/x/model_best.pth

The folder (model.ts or model.onnx, and metadata.json: class names and colours, pixel size,
input format and normalisation, resize, thresholds, the config) runs without detectron2 through
cellseg_d2.inference.exported.ExportedPredictor. Exit status: 0 ok, 2 bad input (the file or key
is named).
"""

from __future__ import annotations

import argparse
import logging
import sys

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from detectron2.utils.logger import setup_logger

import cellseg_d2.modeling  # noqa: F401  (registers CellRCNN)
from cellseg_d2.config import build_config
from cellseg_d2.data.register import check_num_classes
from cellseg_d2.inference.exported import MODEL_FILES
from cellseg_d2.inference.model_export import (
    check_export_target,
    compare_with_eager,
    export_model_folder,
    load_model_for_export,
)
from cellseg_d2.modeling.export import MIN_ONNX_OPSET, ONNX_OPSET

logger = logging.getLogger("cellseg_d2.export_model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; trailing ``KEY VALUE`` pairs override the config."""
    parser = cli.tool_parser(__doc__)
    cli.add_config_arguments(parser)
    parser.add_argument("--format", required=True, choices=sorted(MODEL_FILES))
    parser.add_argument("--output", required=True, help="folder to write (must not exist)")
    parser.add_argument(
        "--opset",
        type=int,
        default=ONNX_OPSET,
        help=f"ONNX opset (default {ONNX_OPSET}; at least {MIN_ONNX_OPSET}, where aligned "
        "ROIAlign exports correctly)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser.parse_args(argv)


@cli.exit_2_on_bad_input
def main(args: argparse.Namespace) -> int:
    """Load the config and weights as prediction does, trace, write the folder."""
    setup_logger(name="cellseg_d2")
    check_export_target(args.format, args.output, args.opset, args.overwrite)
    cfg = build_config(args.config_file, args.opts)
    check_num_classes(cfg)
    model = load_model_for_export(cfg)
    export_model_folder(
        cfg, model, args.format, args.output, opset=args.opset, overwrite=args.overwrite
    )
    report = compare_with_eager(cfg, model, args.output)
    if report["equal"]:
        logger.info("exported == eager on an image of another size: %s", report)
    else:
        logger.warning("exported and eager outputs DIFFER on a test image: %s", report)
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
