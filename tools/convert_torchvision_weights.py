#!/usr/bin/env python3
"""Convert torchvision Mask R-CNN weights (maskrcnn_resnet50_fpn or _v2) for cellseg-d2.

    python tools/convert_torchvision_weights.py \
        ~/.cache/torch/hub/checkpoints/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth \
        --output weights/tv_v2_coco.pth [--config configs/tv_v2_coco.yaml]

Writes a detectron2 checkpoint and the config that builds the same network (default: the
checkpoint's name with .yaml). Train, evaluate or predict with ``--config-file`` that YAML.
Exit status 2 when the input is not a convertible torchvision state dict or the output cannot
be written.
"""

from __future__ import annotations

import argparse
import sys

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from detectron2.utils.logger import setup_logger

from cellseg_d2.modeling.torchvision_weights import convert_torchvision_weights


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = cli.tool_parser(__doc__)
    parser.add_argument(
        "source", help="torchvision state dict (.pth), bare or under model/state_dict"
    )
    parser.add_argument("--output", required=True, help="detectron2 checkpoint to write (.pth)")
    parser.add_argument("--config", help="config YAML to write (default: OUTPUT with .yaml)")
    return parser.parse_args(argv)


@cli.exit_2_on_bad_input
def main(args: argparse.Namespace) -> int:
    """Convert, report what was written; exit 2 on a file that cannot be converted or written."""
    setup_logger(name="cellseg_d2")
    result = convert_torchvision_weights(args.source, args.output, args.config)
    print(
        f"torchvision {result.variant}, {result.num_classes} classes -> {result.weights}\n"
        f"train: python tools/train_net.py --config-file {result.config}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
