#!/usr/bin/env python3
"""Time eager vs TorchScript vs ONNX Runtime prediction (s/image) of one config on this CPU.

    python tools/benchmark_export.py --config-file configs/demo_cells.yaml --size 512 \
        INPUT.MIN_SIZE_TEST 512 INPUT.MAX_SIZE_TEST 512

The model (MODEL.WEIGHTS, or a random initialisation when empty) is exported to both formats in
a temporary folder; then one synthetic size x size image goes through CellPredictor and through
ExportedPredictor for each format: one warm-up call, then --repeats timed calls each, in turns
(eager, TorchScript, ONNX, eager, ...) so that load from other processes spreads over all three.
The whole predict call is timed (resize, network, paste). Prints median and min s/image.
"""

from __future__ import annotations

import argparse
import sys

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

import torch

import cellseg_d2.modeling  # noqa: F401  (registers CellRCNN)
from cellseg_d2.benchmark.engines import format_engines, time_engines
from cellseg_d2.config import build_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; trailing ``KEY VALUE`` pairs override the config."""
    parser = cli.tool_parser(__doc__)
    cli.add_config_arguments(parser)
    parser.add_argument("--size", type=int, default=512, help="square test image side (px)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per engine")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    return parser.parse_args(argv)


@cli.exit_2_on_bad_input
def main(args: argparse.Namespace) -> int:
    """Export, then time the three engines on one image."""
    cfg = build_config(args.config_file, [*args.opts, "MODEL.DEVICE", "cpu"])
    report = time_engines(cfg, args.size, args.repeats, args.threads)
    print(f"{args.config_file}: {format_engines(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
