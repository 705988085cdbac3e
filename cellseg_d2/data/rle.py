"""COCO run-length encoding of instance masks, shared by conversion, submission and scoring.

Everything that leaves this package as a mask (the COCO JSON cache, detectron2 dataset dicts,
submission files) is a *compressed* COCO RLE: ``{"size": [height, width], "counts": str}``. The
counts are a ``str`` rather than the ``bytes`` pycocotools returns so the dicts go into JSON
unchanged.

COCO RLE runs go down the columns (Fortran order), alternating background and foreground and
starting with background. :func:`label_image_to_instances` computes those runs from each
instance's bounding-box crop alone, so a label image with many small cells costs about one pass
over the image plus the area of the boxes, not one full-image pass per cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from pycocotools import mask as mask_util
from scipy import ndimage

__all__ = [
    "InstanceCrop",
    "LabelInstance",
    "check_rle",
    "decode_rle",
    "encode_crops",
    "encode_mask",
    "label_image_to_instances",
    "rle_run_lengths",
    "tight_crop",
]

# A run needs at most 7 characters of 5 bits (2**35 > any image's pixel count); more is garbage.
_MAX_CHARS_PER_RUN = 7


class LabelInstance(NamedTuple):
    """One instance of a label image, in the form the COCO cache stores it.

    Attributes:
        instance_id: the label value in the source image (ids are arbitrary, not contiguous).
        rle: compressed COCO RLE over the whole image, ``counts`` as ``str``.
        bbox: tight ``[x, y, width, height]`` in pixels (detectron2's ``XYWH_ABS``).
        area: number of foreground pixels.
    """

    instance_id: int
    rle: dict
    bbox: list[int]
    area: int


class InstanceCrop(NamedTuple):
    """One instance mask stored as its tight crop: ``mask`` placed at ``(top, left)``."""

    top: int
    left: int
    mask: np.ndarray  # bool, h x w, no empty border rows or columns


def tight_crop(top: int, left: int, mask: np.ndarray) -> InstanceCrop | None:
    """Trim a mask placed at ``(top, left)`` to its tight box; None when it has no pixel.

    Crops are how masks travel through augmentation and prediction without image-sized arrays.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return InstanceCrop(top + int(rows[0]), left + int(cols[0]), mask.copy())


def encode_mask(mask: np.ndarray) -> dict:
    """Encode one binary HxW mask as compressed COCO RLE with ``counts`` as ``str``.

    Use it for masks that already exist at full size (e.g. a model's output); for label images
    :func:`label_image_to_instances` is much cheaper than one call per instance.

    Args:
        mask: HxW array; any non-zero value is foreground.

    Returns:
        ``{"size": [height, width], "counts": str}``.
    """
    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects a 2-D mask, got shape {mask.shape}")
    rle = mask_util.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed with ``str``/``bytes`` counts, or uncompressed) to a mask.

    Args:
        rle: ``{"size": [height, width], "counts": ...}``; a list of counts is the uncompressed
            form used by some ground-truth files.

    Returns:
        HxW ``bool`` array.
    """
    size = [int(rle["size"][0]), int(rle["size"][1])]
    counts = rle["counts"]
    if isinstance(counts, list):
        compressed = mask_util.frPyObjects({"size": size, "counts": counts}, *size)
    else:
        compressed = {
            "size": size,
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }
    return mask_util.decode(compressed).astype(bool)


def rle_run_lengths(counts: str | bytes) -> list[int]:
    """Decode the run lengths of a compressed COCO RLE string without touching pixels.

    Why: pycocotools decodes any string of the right characters and silently turns garbage into
    a wrong mask (its run lengths are unsigned, so a negative delta becomes a huge run, and a
    string cut in the middle of a number reads past its end). Reading the runs first lets
    validation reject such a mask with a message instead of scoring it as 0.

    The format (pycocotools ``rleFrString``): each run is a little-endian sequence of 6-bit
    characters (``chr(48 + x)``), 5 value bits each, bit 0x20 meaning "more characters follow",
    bit 0x10 of the last character the sign; from the fourth run on, the value is a delta to the
    run two places before.

    Args:
        counts: the ``counts`` string.

    Returns:
        The run lengths, background first; they may be negative (the caller judges them).

    Raises:
        ValueError: a character outside ``0``..``o``, a run longer than 7 characters, or a
            string that ends in the middle of a run.
    """
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    runs: list[int] = []
    value = shift = chars = 0
    for char in counts:
        code = ord(char) - 48
        if not 0 <= code < 64:
            raise ValueError(f"character {char!r} is not a COCO RLE character (0..o)")
        value |= (code & 0x1F) << shift
        shift += 5
        chars += 1
        if chars > _MAX_CHARS_PER_RUN:
            raise ValueError(f"run {len(runs)} is longer than {_MAX_CHARS_PER_RUN} characters")
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value = shift = chars = 0
    if chars:
        raise ValueError("the string ends in the middle of a run")
    return runs


def check_rle(rle: dict) -> None:
    """Check that a COCO RLE's runs tile its ``[height, width]`` exactly, without decoding.

    One rule for the validator and the scorer: every run length decodes, none is negative, and
    together they cover ``height * width`` pixels. A corrupt string that passes the character
    check (e.g. ``"oooooooooo1"``) fails here instead of becoming an empty or garbage mask.

    Args:
        rle: ``{"size": [height, width], "counts": str | bytes | list[int]}``.

    Raises:
        ValueError: saying what is wrong (the caller adds which entry it was).
    """
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = list(counts) if isinstance(counts, list) else rle_run_lengths(counts)
    negative = next((i for i, run in enumerate(runs) if run < 0), None)
    if negative is not None:
        raise ValueError(f"run {negative} has a negative length ({runs[negative]})")
    total = sum(runs)
    if total != height * width:
        raise ValueError(
            f"the run lengths add up to {total} pixels, not {height}x{width} = {height * width}"
        )


def encode_crops(crops: Sequence[InstanceCrop], height: int, width: int) -> list[dict]:
    """Encode binary crops placed in an HxW image as compressed COCO RLEs, all at once.

    Costs the crops' area, not the image's, and runs as a handful of numpy passes over all
    crops together plus one pycocotools call: how hundreds of predicted cells per image become
    submission masks without full-size arrays or per-cell Python work.

    How: each crop is transposed (COCO runs go down columns) and padded with a background row
    above and below every column, and all crops are laid end to end. Every foreground run then
    starts and ends inside one padded column of one crop, so the positions where the values
    change map straight to full-image Fortran-order positions. A run that ends at the bottom of
    one column and restarts at the top of the next is one run in Fortran order (possible only
    when a crop spans all rows); such end/start pairs are dropped.

    Args:
        crops: ``(top, left, mask)`` with an h x w mask (non-zero = foreground) inside the image.
        height, width: the image size.

    Returns:
        ``{"size": [height, width], "counts": str}`` per crop, in order.
    """
    if not crops:
        return []
    masks = [np.asarray(crop.mask) != 0 for crop in crops]
    padded_h = np.array([m.shape[0] + 2 for m in masks])
    sizes = padded_h * np.array([m.shape[1] for m in masks])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    flat = np.zeros(int(offsets[-1]) + 1, dtype=bool)  # +1: a final background sentinel
    for mask, start, rows in zip(masks, offsets[:-1], padded_h):
        flat[start : start + mask.size + 2 * mask.shape[1]].reshape(-1, rows)[:, 1:-1] = mask.T
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    owner = np.searchsorted(offsets, changes, side="right") - 1
    column, row = np.divmod(changes - offsets[owner], padded_h[owner])
    tops = np.array([crop.top for crop in crops])
    lefts = np.array([crop.left for crop in crops])
    edges = (lefts[owner] + column) * height + (tops[owner] + row - 1)
    first = np.searchsorted(owner, np.arange(len(crops)))
    position = np.arange(len(edges)) - first[owner]
    joined = (owner[1:] == owner[:-1]) & (edges[1:] == edges[:-1]) & (position[:-1] % 2 == 1)
    if joined.any():
        drop = np.flatnonzero(joined)
        keep = np.ones(len(edges), dtype=bool)
        keep[drop] = keep[drop + 1] = False
        edges, owner = edges[keep], owner[keep]
    total = height * width
    bounds = np.searchsorted(owner, np.arange(len(crops) + 1))
    uncompressed = []
    for index in range(len(crops)):
        own = edges[bounds[index] : bounds[index + 1]]
        if own.size == 0 or own[-1] != total:  # no zero-length trailing run: pycocotools omits it
            own = np.append(own, total)
        counts = np.diff(own, prepend=0).tolist()
        uncompressed.append({"size": [height, width], "counts": counts})
    compressed = mask_util.frPyObjects(uncompressed, height, width)
    return [{"size": [height, width], "counts": rle["counts"].decode()} for rle in compressed]


def label_image_to_instances(labels: np.ndarray) -> list[LabelInstance]:
    """Split an instance-label image into one RLE, box and area per distinct non-zero value.

    NOTE: an id whose pixels form several disconnected pieces stays ONE instance: the id, not
    connectivity, defines a cell (a cell cut by another may show up as two blobs).

    Args:
        labels: HxW integer array, 0 = background; ids need not be contiguous.

    Returns:
        The instances sorted by id.
    """
    if labels.ndim != 2:
        raise ValueError(f"label image must be 2-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label image must hold integers, got {labels.dtype}")
    if labels.size and int(labels.min()) < 0:
        raise ValueError("label image holds negative ids")
    height, width = labels.shape
    if labels.size == 0 or not labels.any():
        return []
    ids = None
    work = labels
    if int(labels.max()) > labels.size:
        # find_objects allocates one slot per possible id; relabel huge sparse ids first.
        ids, inverse = np.unique(labels, return_inverse=True)
        work = inverse.reshape(labels.shape)
        if ids[0] != 0:  # no background pixel: shift so the first id is not label 0
            ids = np.concatenate([[0], ids])
            work = work + 1
    found = [
        (index, box)
        for index, box in enumerate(ndimage.find_objects(work), start=1)
        if box is not None
    ]
    crops = [InstanceCrop(box[0].start, box[1].start, work[box] == index) for index, box in found]
    rles = encode_crops(crops, height, width)
    return [
        LabelInstance(
            instance_id=int(index if ids is None else ids[index]),
            rle=rle,
            bbox=[cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start],
            area=int(np.count_nonzero(crop.mask)),
        )
        for (index, (rows, cols)), crop, rle in zip(found, crops, rles)
    ]
