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
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

import numpy as np
import torch

import cellseg_d2.modeling  # noqa: F401  (registers CellRCNN)
from cellseg_d2.config import build_config
from cellseg_d2.data.synthetic import synthesize_image
from cellseg_d2.inference.exported import ExportedPredictor
from cellseg_d2.inference.model_export import export_model_folder, load_model_for_export
from cellseg_d2.inference.predictor import CellPredictor


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
    torch.set_num_threads(args.threads)
    cfg = build_config(args.config_file, [*args.opts, "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = load_model_for_export(cfg)
    rgb, _ = synthesize_image(np.random.default_rng(0), args.size, args.size)
    image = np.ascontiguousarray(rgb[:, :, 2::-1])
    eager = CellPredictor(cfg)
    eager.model.load_state_dict(model.state_dict())
    engines = {"eager": eager}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("torchscript", "onnx"):
            folder = export_model_folder(cfg, model, fmt, Path(tmp) / fmt)
            engines[fmt] = ExportedPredictor(folder, num_threads=args.threads)
        times: dict[str, list[float]] = {name: [] for name in engines}
        counts = {name: len(engine([image])[0]) for name, engine in engines.items()}
        for _ in range(args.repeats):
            for name, engine in engines.items():
                start = time.perf_counter()
                engine([image])
                times[name].append(time.perf_counter() - start)
    print(f"{args.config_file}: {args.size}x{args.size} image, {args.threads} thread(s)")
    print(f"{'engine':<12} {'median s/img':>12} {'min s/img':>10} {'detections':>10}")
    for name, values in times.items():
        median, best = statistics.median(values), min(values)
        print(f"{name:<12} {median:>12.3f} {best:>10.3f} {counts[name]:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
