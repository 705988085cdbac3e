#!/usr/bin/env python3
"""Measure speed, memory and FLOP use of a config on this machine (CPU or CUDA).

    python tools/benchmark.py --config-file configs/demo_cells.yaml --data output/demo/data \
        --iters 10 --json output/benchmark.json

Prints a table (conversion cold/cached, loader images/s with elastic on/off and 0/2 workers,
training s/iter of CellTrainer vs detectron2's DefaultTrainer run alternately, model vs end-to-end
predict s/image, peak RSS, FLOPs, fp32 matmul peak and utilisation) and writes it as JSON.

    python tools/benchmark.py --stream-images 10000 [--stream-formats coco,csv]

measures only the memory of a streamed prediction run instead: N small images through the
predict writers (a fixed set of detections stands in for the model), RSS sampled along the way.

    python tools/benchmark.py --engines 512 --iters 5 --config-file C [KEY VALUE ...]

times the whole predict call of the eager model, its TorchScript export and its ONNX Runtime
export on one synthetic image (the model exported to a temporary folder first).

    python tools/benchmark.py --slides 10000,40000 [--slide-model-ms 50] [--slide-pitch 64]
        [--slide-cell-workers N]

measures whole-slide prediction instead: synthetic square slides of those sides (generated tile
by tile) through the real slide loop with 2 reading workers, a fake model that finds the slide's
discs and takes --slide-model-ms per tile; peak RSS (this process and its workers), tiles/s and
the share of the time the model works.

    python tools/benchmark.py --accuracy configs/demo_cells.yaml,configs/demo_pointrend_cells.yaml \
        --data ROOT --minutes 30 [--output-dir output/accuracy] [KEY VALUE ...]

measures accuracy instead: each config trains on ROOT/train for --minutes of wall-clock time
(SOLVER.TIME_BUDGET_MINUTES), predicts ROOT/test_release with its best checkpoint and is scored
against ROOT/test_gt as tools/evaluate_submission.py scores: one row per config (iterations,
train minutes, mask AP, AP50, PQ, mPQ, AJI in percent) with the exact train and predict
commands, also written as accuracy.json and accuracy.md in --output-dir. A read-only ROOT is
used through links in --output-dir/data. Exit status 1 when a config failed (its row says why).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from detectron2.utils.logger import setup_logger

import cellseg_d2.modeling  # noqa: F401  (registers CellRCNN)
from cellseg_d2.benchmark import (
    format_benchmark,
    measure_slide_benchmark,
    measure_stream_memory,
    run_benchmark,
)
from cellseg_d2.benchmark.accuracy import (
    format_accuracy_table,
    run_accuracy_benchmark,
    write_accuracy_report,
)
from cellseg_d2.benchmark.engines import format_engines, time_engines
from cellseg_d2.benchmark.synthetic_slide import DISC_PITCH, MIN_DISC_PITCH
from cellseg_d2.config import build_config
from cellseg_d2.inference.export import EXPORT_FORMATS
from cellseg_d2.utils.files import atomic_write


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; trailing ``KEY VALUE`` pairs override the config."""
    parser = cli.tool_parser(__doc__)
    cli.add_config_arguments(parser, required=False)  # not for --stream-images nor --slides
    parser.add_argument("--data", help="dataset root (train/, test_release/)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations (default 10)")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument(
        "--stream-images",
        type=int,
        help="instead: RSS growth while N images stream through the predict writers",
    )
    parser.add_argument(
        "--stream-formats",
        default=",".join(EXPORT_FORMATS),
        help="formats written by --stream-images (default: all)",
    )
    parser.add_argument(
        "--engines",
        type=int,
        metavar="SIZE",
        help="instead: eager vs TorchScript vs ONNX Runtime s/image on one SIZE x SIZE image "
        "(--iters timed calls each; CPU)",
    )
    parser.add_argument(
        "--slides",
        help="instead: whole-slide prediction of synthetic square slides of these sides, e.g. "
        "10000,40000 (peak RSS with the workers, tiles/s, model share)",
    )
    parser.add_argument(
        "--slide-model-ms",
        type=float,
        default=50.0,
        help="milliseconds the fake model takes per tile with --slides (default 50)",
    )
    parser.add_argument(
        "--slide-cell-workers",
        type=int,
        default=0,
        help="processes outlining and measuring cells beside the fake model with --slides "
        "(default 0: in the loop)",
    )
    parser.add_argument(
        "--slide-pitch",
        type=int,
        default=DISC_PITCH,
        help=f"pixels between cells of the synthetic slides (default {DISC_PITCH})",
    )
    _add_accuracy_arguments(parser)
    args = parser.parse_args(argv)
    if args.accuracy is not None:
        args.accuracy = [name for name in args.accuracy.split(",") if name]
        if not args.accuracy or not args.data or args.minutes is None or args.minutes <= 0:
            parser.error("--accuracy needs config files, --data and --minutes > 0")
    if args.iters < 1:
        parser.error("--iters must be >= 1")
    if args.engines is not None and (args.engines < 32 or not args.config_file):
        parser.error("--engines needs --config-file and an image side >= 32")
    if args.slides is not None:
        try:
            args.slides = [int(side) for side in args.slides.split(",")]
        except ValueError:
            parser.error("--slides: comma-separated whole numbers of pixels, e.g. 10000,40000")
        if min(args.slides) < 1 or args.slide_model_ms < 0 or args.slide_cell_workers < 0:
            parser.error(
                "--slides must be positive, --slide-model-ms and --slide-cell-workers >= 0"
            )
        if args.slide_pitch % 2 or args.slide_pitch < MIN_DISC_PITCH:
            parser.error(f"--slide-pitch must be even and >= {MIN_DISC_PITCH}")
    standalone = (
        args.stream_images is not None or args.slides is not None or args.engines or args.accuracy
    )
    if not standalone and not (args.config_file and args.data):
        parser.error("--config-file and --data are required (unless --stream-images or --slides)")
    if args.stream_images is not None and args.stream_images < 10:
        parser.error("--stream-images must be >= 10")
    formats = tuple(args.stream_formats.split(","))
    if not set(formats) <= set(EXPORT_FORMATS):
        parser.error(f"--stream-formats: choose from {', '.join(EXPORT_FORMATS)}")
    args.stream_formats = formats
    return args


def _add_accuracy_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``--accuracy``."""
    parser.add_argument(
        "--accuracy",
        metavar="CONFIG[,CONFIG...]",
        help="instead: train each config for --minutes on --data/train, predict test_release, "
        "score against test_gt (AP, AP50, PQ, mPQ, AJI)",
    )
    parser.add_argument("--minutes", type=float, help="--accuracy: training budget per config")
    parser.add_argument(
        "--output-dir",
        default="output/accuracy",
        help="--accuracy: one folder per config and the tables (default output/accuracy)",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.5,
        help="--accuracy: smallest score PQ, mPQ and AJI count (AP counts all; default 0.5)",
    )


def _accuracy(args: argparse.Namespace) -> int:
    """``--accuracy``: train, predict and score each config; print and write the table."""
    rows = run_accuracy_benchmark(
        args.accuracy,
        args.data,
        args.minutes,
        args.output_dir,
        tools_dir=Path(__file__).resolve().parent,
        opts=args.opts,
        score_thresh=args.score_thresh,
    )
    print(format_accuracy_table(rows))
    command = shlex.join(["python", *sys.argv])
    for path in write_accuracy_report(rows, args.output_dir, command=command):
        print(f"written: {path}")
    return 1 if any(row["error"] for row in rows) else 0


@cli.exit_2_on_bad_input
def main(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the JSON atomically."""
    setup_logger(name="cellseg_d2")
    if args.accuracy is not None:
        return _accuracy(args)
    if args.stream_images is not None:
        report = {"stream": measure_stream_memory(args.stream_images, args.stream_formats)}
    elif args.engines is not None:
        cfg = build_config(args.config_file, [*args.opts, "MODEL.DEVICE", "cpu"])
        print(f"{args.config_file}: {format_engines(time_engines(cfg, args.engines, args.iters))}")
        return 0
    elif args.slides is not None:
        report = measure_slide_benchmark(
            args.slides,
            model_ms=args.slide_model_ms,
            pitch=args.slide_pitch,
            cell_workers=args.slide_cell_workers,
        )
    else:
        cfg = build_config(args.config_file, args.opts)
        report = run_benchmark(cfg, args.data, iters=args.iters, loader_batches=args.iters)
    print(format_benchmark(report))
    if args.json:
        with atomic_write(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
