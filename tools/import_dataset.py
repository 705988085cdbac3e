#!/usr/bin/env python3
"""Import a dataset from COCO, QuPath GeoJSON, label images, HoVer-Net .mat or PanNuke arrays.

Examples::

    python tools/import_dataset.py --from coco annotations.json --images imgs/ --output ds/
    python tools/import_dataset.py --from qupath exports/ --images imgs/ --output ds/ \\
        --unclassified other
    python tools/import_dataset.py --from labels imgs/ --labels masks/ --output ds/ \\
        --class-names nucleus
    python tools/import_dataset.py --from hovernet Lizard/labels --images Lizard/images \\
        --output ds/ --class-names neutrophil,epithelial,lymphocyte,plasma,eosinophil,connective
    python tools/import_dataset.py --from pannuke "Fold 1" --test "Fold 3" --output ds/

Writes ``train/<name>/image.tif`` + ``classK.tif``, with ``--test`` also ``test_release/``,
``test_image_name_to_ids.json`` and ``test_gt/``, and ``dataset.json`` (class names, pixel
size, source format) under ``--output``; then ``prepare_dataset.py --root`` and training read it
like any dataset. The rules of each format are in README.md ("Importing datasets") and in
``cellseg_d2/data/importers/``. Nothing is written on failure; exit status 2 means bad input
(the message names the file and object).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from cellseg_d2.utils import cli

cli.quiet_third_party_warnings()  # first: some third-party modules warn as they are imported

from cellseg_d2.data.importers import FORMATS, ImportOptions, import_dataset


def _pixel_size(text: str) -> float:
    """argparse type of ``--pixel-size``: a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of um/px, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; argparse exits with status 2 on bad flags."""
    parser = cli.tool_parser(__doc__)
    parser.add_argument("--from", dest="source_format", required=True, choices=sorted(FORMATS))
    parser.add_argument("source", type=Path, help="the source file or folder (see README)")
    parser.add_argument("--output", required=True, type=Path, help="dataset root to create")
    parser.add_argument("--test", type=Path, help="a second source of the same format: test split")
    cli.add_class_names_argument(
        parser,
        default=None,
        help_text="comma-separated class names in classK.tif order (default: from the source; "
        "pannuke: its five classes; labels: one class 'cell')",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--unclassified", help="class name for objects without a class")
    group.add_argument(
        "--skip-unclassified", action="store_true", help="leave objects without a class out"
    )
    parser.add_argument("--pixel-size", type=_pixel_size, help="um per pixel for dataset.json")
    parser.add_argument("--images", type=Path, help="image folder (coco, qupath, hovernet)")
    parser.add_argument("--test-images", type=Path, help="image folder of the --test source")
    parser.add_argument("--labels", type=Path, help="label-image folder (labels)")
    parser.add_argument("--classes", type=Path, help="class image/table folder (labels)")
    parser.add_argument("--nucleus", action="store_true", help="qupath: use cells' nucleusGeometry")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--verbose", action="store_true", help="log every skipped object")
    return parser.parse_args(argv)


@cli.exit_2_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """Run the import; return 0 on success, 2 on bad input."""
    args = parse_args(argv)
    cli.log_to_console(verbose=args.verbose)
    options = ImportOptions(
        class_names=args.class_names,
        unclassified=args.unclassified,
        skip_unclassified=args.skip_unclassified,
        pixel_size_um=args.pixel_size,
    )
    summary = import_dataset(
        args.source_format,
        args.source,
        args.output,
        options,
        class_dir=args.classes,
        **cli.flags(args, "test", "overwrite", "images", "test_images", "labels", "nucleus"),
    )
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
