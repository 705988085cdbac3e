"""The one home of every name the dataset layout and the outputs share.

Folder and file names (``train/<id>/image.tif`` + ``classK.tif``, ``test_release/``,
``test_gt/``, the id map), the default class names, the ``classK`` fallback name, the class
palette used by figures and GeoJSON alike, and the COCO categories. Everything that writes or
reads the layout imports these instead of spelling the strings again, so they cannot drift.
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Sequence

from cellseg_d2.errors import CellDataError

__all__ = [
    "CACHE_DIR",
    "DEFAULT_CLASS_NAMES",
    "ID_MAP_NAME",
    "IMAGE_FILE_NAME",
    "TEST_DIR",
    "TEST_GT_DIR",
    "TRAIN_DIR",
    "check_class_names",
    "class_color",
    "class_colors",
    "class_file_name",
    "class_index_of",
    "class_name",
    "coco_categories",
    "generic_class_name",
    "parse_class_names",
]

#: Training folders, one per image: ``train/<id>/image.tif`` + ``classK.tif``.
TRAIN_DIR = "train"
#: Test images: ``test_release/<name>.tif``.
TEST_DIR = "test_release"
#: Ground truth of the test images, laid out like ``train/``: ``test_gt/<stem>/classK.tif``.
TEST_GT_DIR = "test_gt"
#: The id map of the test images: ``[{file_name, id, height, width}, ...]``.
ID_MAP_NAME = "test_image_name_to_ids.json"
#: The image of a training folder.
IMAGE_FILE_NAME = "image.tif"
#: The converter's cache folder inside a dataset root.
CACHE_DIR = ".cellseg_cache"

#: The four MoNuSAC 2020 classes, the default of ``DATASETS.CLASS_NAMES``: name K is the class of
#: ``classK.tif``, detectron2 category K - 1 and COCO category K.
DEFAULT_CLASS_NAMES: tuple[str, ...] = ("epithelial", "lymphocyte", "neutrophil", "macrophage")

#: One clearly distinct RGB colour for each of the first four classes; more classes get hues
#: spread by golden-ratio steps (:func:`class_colors`).
_BASE_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
)
_CLASS_FILE_PATTERN = re.compile(r"class([1-9][0-9]*)\.tif")


def generic_class_name(category_id: int) -> str:
    """The fallback name ``classK`` of the 1-based COCO category ``category_id``.

    Why: tools without a config (scoring, submission checks) and outputs for classes beyond the
    configured names still need a label; one spelling keeps the files and tables joinable.
    """
    return f"class{category_id}"


def class_name(index: int, class_names: Sequence[str]) -> str:
    """The name of the 0-based class ``index``: the configured name, else ``classK``."""
    return class_names[index] if 0 <= index < len(class_names) else generic_class_name(index + 1)


def class_file_name(category_id: int) -> str:
    """The mask file of the 0-based detectron2 category ``category_id``: ``class{id + 1}.tif``."""
    return f"{generic_class_name(category_id + 1)}.tif"


def class_index_of(file_name: str) -> int | None:
    """The 0-based category of a mask file name ``classK.tif`` (K >= 1), None for other names."""
    match = _CLASS_FILE_PATTERN.fullmatch(file_name)
    return int(match.group(1)) - 1 if match else None


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """``num_classes`` distinct RGB colours: the four base colours, then hues spread evenly.

    Why one palette: figures (``thing_colors``), GeoJSON ``classification.color`` and any later
    export must draw class K in the same colour, for any number of classes.
    """
    colors = list(_BASE_COLORS[:num_classes])
    for k in range(max(num_classes - len(_BASE_COLORS), 0)):
        # Golden-ratio hue steps keep successive colours far apart on the colour wheel.
        red, green, blue = colorsys.hsv_to_rgb((0.11 + 0.618 * k) % 1.0, 0.75, 0.9)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


def class_color(index: int) -> tuple[int, int, int]:
    """The RGB colour of the 0-based class ``index`` (:func:`class_colors`' entry)."""
    return class_colors(index + 1)[index]


def check_class_names(class_names: object, key: str = "DATASETS.CLASS_NAMES") -> tuple[str, ...]:
    """Check a list of class names and return it as a tuple.

    Why: the names become ``thing_classes`` and the COCO categories, and their count is the
    number of ``classK.tif`` files a training folder may hold; an empty, repeated or non-string
    name would only show much later as a confusing detectron2 error.

    Args:
        class_names: the names, in ``classK.tif`` order.
        key: the config key or flag named in the error.

    Raises:
        CellDataError: not a non-empty list of distinct, non-empty strings.
    """
    if isinstance(class_names, str) or not isinstance(class_names, (list, tuple)):
        raise CellDataError(f"{key}: expected a list of class names, got {class_names!r}")
    names = tuple(class_names)
    if not names:
        raise CellDataError(f"{key}: needs at least one class name")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise CellDataError(f"{key}: class names must be non-empty strings, got {name!r}")
    if len(set(names)) != len(names):
        raise CellDataError(f"{key}: class names must be distinct, got {list(names)}")
    return names


def parse_class_names(text: str) -> tuple[str, ...]:
    """Class names from a command-line value ``"a,b,c"`` (``--class-names`` of the tools).

    Raises:
        CellDataError: see :func:`check_class_names`.
    """
    return check_class_names([name.strip() for name in text.split(",")], key="--class-names")


def coco_categories(class_names: Sequence[str]) -> list[dict]:
    """COCO ``categories`` for the class names: id K (1-based) is ``classK.tif``."""
    return [{"id": k, "name": name} for k, name in enumerate(class_names, start=1)]
