"""Caps on what the readers take from a file, so a hostile or mistaken file costs bounded memory.

A file size cap alone does not bound memory: parsed JSON costs far more than its text (a list of
zeros, ``[0,0,...]``, takes about 100 bytes of Python objects and messages per input byte), and
a label image of a few pixels may hold thousands of instance ids. Each cap here bounds what is
built from the file, is checked before the costly step, and names the file, the limit and how to
raise it:

- submissions: :func:`max_submission_bytes` (file size), at most one JSON value per
  :data:`MIN_SUBMISSION_BYTES_PER_VALUE` bytes, and :func:`max_submission_entries` (detections,
  derived from the id map; JSON values are counted before parsing);
- id maps: :func:`max_id_map_bytes` and at most one JSON value per
  :data:`MIN_ID_MAP_BYTES_PER_VALUE` bytes;
- training masks: :data:`DEFAULT_MAX_INSTANCES_PER_IMAGE` instance ids per image
  (``DATASETS.MAX_INSTANCES_PER_IMAGE``, ``prepare_dataset.py --max-instances``).

The image pixel and byte caps live with the TIFF reader (:mod:`cellseg_d2.data.io`).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np

from cellseg_d2.errors import CellDataError

__all__ = [
    "DEFAULT_MAX_DETECTIONS_PER_IMAGE",
    "DEFAULT_MAX_ID_MAP_MB",
    "DEFAULT_MAX_INSTANCES_PER_IMAGE",
    "DEFAULT_MAX_SUBMISSION_MB",
    "MAX_DETECTIONS_ENV",
    "MAX_ID_MAP_MB_ENV",
    "MAX_INSTANCES_KEY",
    "MAX_SUBMISSION_MB_ENV",
    "MIN_ID_MAP_BYTES_PER_VALUE",
    "MIN_SUBMISSION_BYTES_PER_VALUE",
    "PIXELS_PER_DETECTION",
    "VALUES_PER_ENTRY",
    "check_cached_instances",
    "check_instance_count",
    "check_max_instances",
    "count_instance_ids",
    "max_detections_per_image",
    "max_id_map_bytes",
    "max_submission_bytes",
    "max_submission_entries",
    "read_bytes_bounded",
    "too_large",
]

#: Environment variable that overrides the largest submission read, in MiB (decompressed).
MAX_SUBMISSION_MB_ENV = "CELLSEG_MAX_SUBMISSION_MB"
#: Default of that limit: about a million detections of small cells (~250 bytes each).
DEFAULT_MAX_SUBMISSION_MB = 256
#: Environment variable that overrides the largest id map read, in MiB.
MAX_ID_MAP_MB_ENV = "CELLSEG_MAX_ID_MAP_MB"
#: Default of that limit: some 200,000 images (an entry takes 50 to 100 bytes).
DEFAULT_MAX_ID_MAP_MB = 16
#: Environment variable that overrides :data:`DEFAULT_MAX_DETECTIONS_PER_IMAGE`.
MAX_DETECTIONS_ENV = "CELLSEG_MAX_DETECTIONS_PER_IMAGE"
#: A submission may hold this many detections per id-map image on average: ten times
#: detectron2's largest usual ``TEST.DETECTIONS_PER_IMAGE`` (1,000).
DEFAULT_MAX_DETECTIONS_PER_IMAGE = 10_000
#: ... or one detection per this many pixels of the id map's images, when that is more (large
#: tiled images, whose merged detections are not cut to ``TEST.DETECTIONS_PER_IMAGE``).
PIXELS_PER_DETECTION = 256
#: JSON values allowed per allowed detection: a detection holds 15 (its object, 5 fields, 4 box
#: numbers, the mask's object, size list, 2 sides and counts); the rest is room for extra keys.
VALUES_PER_ENTRY = 24
#: A submission holds at most one JSON value per this many bytes: its most compact detection
#: takes about 100 bytes for its 15 values. A denser file (``[0,0,...]``, ``[{},{},...]``) is
#: refused before parsing, whatever the id map allows.
MIN_SUBMISSION_BYTES_PER_VALUE = 4
#: An id map holds at most one JSON value per this many bytes: an entry is 5 values (its object,
#: file name, id, height, width) in at least 45 bytes. Denser files are not id maps, and their
#: objects would cost far more memory than their bytes.
MIN_ID_MAP_BYTES_PER_VALUE = 8
#: Default cap on the instance ids of one training image (all its masks together).
DEFAULT_MAX_INSTANCES_PER_IMAGE = 10_000
#: The config key of that cap (``tools/prepare_dataset.py --max-instances`` on the command line).
MAX_INSTANCES_KEY = "DATASETS.MAX_INSTANCES_PER_IMAGE"


def _env_positive(name: str, default: float) -> float:
    """A positive finite number from the environment variable ``name``, else ``default``.

    Raises:
        CellDataError: the variable is set to something else.
    """
    text = os.environ.get(name, "").strip() or str(default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or not math.isfinite(value):
        raise CellDataError(f"{name}={text!r}: expected a positive number")
    return value


def max_submission_bytes() -> int:
    """The largest submission (plain JSON, or the zip member decompressed) read, in bytes.

    Why a limit: a zip of a few hundred KB can hold gigabytes of JSON; without a cap, checking
    a file received from someone else could exhaust the machine's memory. The default,
    :data:`DEFAULT_MAX_SUBMISSION_MB` MiB, is overridden by :data:`MAX_SUBMISSION_MB_ENV`.

    Raises:
        CellDataError: the variable is not a positive number.
    """
    return int(_env_positive(MAX_SUBMISSION_MB_ENV, DEFAULT_MAX_SUBMISSION_MB) * 2**20)


def max_id_map_bytes() -> int:
    """The largest id map read, in bytes: :data:`DEFAULT_MAX_ID_MAP_MB` MiB or the variable.

    Raises:
        CellDataError: :data:`MAX_ID_MAP_MB_ENV` is not a positive number.
    """
    return int(_env_positive(MAX_ID_MAP_MB_ENV, DEFAULT_MAX_ID_MAP_MB) * 2**20)


def too_large(source: str, size: str, limit: int, what: str, env: str) -> CellDataError:
    """The error for a file above its size limit, saying how to raise the limit."""
    return CellDataError(
        f"{source}: {size} is more than the {limit / 2**20:g} MiB {what} may hold; "
        f"set {env}=<MiB> to raise the limit"
    )


def read_bytes_bounded(path: Path, limit: int, what: str, env: str) -> bytes:
    """The bytes of ``path``, refused from its size before reading when above ``limit``.

    Why not ``stat`` then ``read_bytes``: the file may grow in between (a log, a pipe); here at
    most ``limit + 1`` bytes are ever read.

    Args:
        path: the file.
        limit: the largest size accepted, in bytes.
        what: what the file is, for the message (e.g. ``"an id map"``).
        env: the environment variable that raises the limit, for the message.

    Raises:
        CellDataError: the file is larger than ``limit``.
        OSError: the file cannot be opened or read (the caller names what it was).
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise too_large(str(path), f"{size} bytes", limit, what, env)
        # NOTE: read(n) allocates n bytes up front, so ask for the size found, not the limit.
        data = handle.read(size + 1)
        if len(data) > size:  # the file grew since fstat: read on in steps, up to limit + 1
            grown = bytearray(data)
            while len(grown) <= limit:
                chunk = handle.read(min(2**20, limit + 1 - len(grown)))
                if not chunk:
                    break
                grown += chunk
            data = bytes(grown)
    if len(data) > limit:
        raise too_large(str(path), "the data read", limit, what, env)
    return data


def max_detections_per_image() -> int:
    """:data:`DEFAULT_MAX_DETECTIONS_PER_IMAGE`, or :data:`MAX_DETECTIONS_ENV` when set.

    Raises:
        CellDataError: the variable is not a positive integer.
    """
    value = _env_positive(MAX_DETECTIONS_ENV, DEFAULT_MAX_DETECTIONS_PER_IMAGE)
    if value != int(value):
        raise CellDataError(f"{MAX_DETECTIONS_ENV}={value!r}: expected a positive integer")
    return int(value)


def max_submission_entries(id_map_entries: list[dict]) -> int:
    """The most detections a submission for ``id_map_entries`` may hold.

    The larger of :func:`max_detections_per_image` times the number of images and one detection
    per :data:`PIXELS_PER_DETECTION` pixels of all images together. Far above what a detector
    emits, yet it keeps the memory of reading and checking a submission proportional to the
    test set instead of to whatever a file holds.

    Raises:
        CellDataError: :data:`MAX_DETECTIONS_ENV` is not a positive integer.
    """
    pixels = sum(int(entry["height"]) * int(entry["width"]) for entry in id_map_entries)
    return max(max_detections_per_image() * len(id_map_entries), pixels // PIXELS_PER_DETECTION)


def check_max_instances(value: object, key: str = MAX_INSTANCES_KEY) -> int:
    """Check a cap on instances per image and return it as an int.

    Raises:
        CellDataError: naming ``key``, when ``value`` is not an integer >= 1.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise CellDataError(f"{key}: expected an integer >= 1, got {value!r}")
    return int(value)


def count_instance_ids(labels: np.ndarray, limit: int) -> int:
    """The number of distinct non-zero ids of a label image, exact up to ``limit``.

    Cheap in the usual case: ids numbered 1..n give a largest id of at most ``limit``, which
    already proves there are no more than ``limit`` ids; that bound is returned without
    sorting the pixels. Only a larger id (too many ids, or sparse ones) pays for ``np.unique``.

    Args:
        labels: integer label image, 0 = background, no negative ids.
        limit: the count that matters to the caller.

    Returns:
        A number <= ``limit`` when there are at most ``limit`` ids (an upper bound, possibly
        not exact), else the exact count.
    """
    if labels.size == 0:
        return 0
    peak = int(labels.max())
    if peak <= limit:
        return peak
    ids = np.unique(labels)
    return int(ids.size - (ids[0] == 0))


def check_instance_count(source: str, count: int, limit: int, detail: str = "") -> None:
    """Refuse an image with more than ``limit`` instance ids, naming the file and the cap.

    Why: training stacks one full-size mask per instance (tens of thousands are gigabytes) and
    detectron2 stops with a traceback on some such images; better a clear refusal when the
    dataset is prepared.

    Args:
        source: the mask or image the count belongs to.
        count: its number of instance ids.
        limit: the cap, from ``DATASETS.MAX_INSTANCES_PER_IMAGE`` or ``--max-instances``.
        detail: optional words on how the count was made, appended in parentheses.

    Raises:
        CellDataError: when ``count > limit``.
    """
    if count > limit:
        how = f" ({detail})" if detail else ""
        raise CellDataError(
            f"{source}: {count} instance ids{how}, more than the {limit} allowed per image; "
            f"raise {MAX_INSTANCES_KEY} (prepare_dataset.py --max-instances) if they are real"
        )


def check_cached_instances(coco: dict, root: str | os.PathLike, limit: int) -> None:
    """Refuse cached training annotations with more than ``limit`` instances in one image.

    Why: a cache built under a larger cap is reused as long as its sources are unchanged, so the
    cap a training run asks for is checked again on what it would load (instances kept after
    ``DATASETS.MIN_INSTANCE_AREA``; counting them costs one pass over the annotations).

    Raises:
        CellDataError: naming the image folder with the most instances, and the limit.
    """
    counts = Counter(annotation["image_id"] for annotation in coco["annotations"])
    if not counts or max(counts.values()) <= limit:
        return
    image_id, count = counts.most_common(1)[0]
    image = next(image for image in coco["images"] if image["id"] == image_id)
    over = sum(1 for value in counts.values() if value > limit)
    folder = Path(root) / Path(image["file_name"]).parent
    check_instance_count(str(folder), count, limit, f"cached; {over} image(s) over the limit")
