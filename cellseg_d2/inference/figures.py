"""Drawing the figures: each image beside its predictions (and its ground truth when known).

One row per image, panels left to right: the original, the ground truth (when given), the
predictions. Masks are filled in their class colour (the datasets' ``thing_colors``, for any
number of classes) with transparency and outlined; boxes carry the class name and, for
predictions, the score (a label that would cover another, more confident one is left out, so
dense images stay readable). Panels and rows are
separated by :data:`GAP` white pixels, so a row of ``P`` panels of a ``W x H`` image is
``P * W + (P - 1) * GAP`` wide and ``H`` tall, and a figure of ``N`` rows is as wide as its widest
row and ``sum(H) + (N - 1) * GAP`` tall.

``style="outlines"`` is the view a biologist reads: no fill, no boxes, no labels, only each
cell's outline in its class colour (1 px, exact colour, so the cells stay visible under it), and
under each row a :data:`COUNT_BAR_HEIGHT` px strip of per-class count bars, ground truth (grey)
beside predictions (class colour), so a class the model over- or under-calls shows at a glance.
A row is then ``H + GAP + COUNT_BAR_HEIGHT`` tall. Classes beyond the palette reuse its colours.

Everything works on numpy arrays with OpenCV drawing, at the image's own resolution; masks are
decoded once each and painted inside their box only, so a dense image with hundreds of cells
draws in a fraction of a second.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_util

from cellseg_d2.data.rle import decode_rle
from cellseg_d2.utils.files import atomic_write
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES, class_color, class_name

__all__ = [
    "COUNT_BAR_HEIGHT",
    "GAP",
    "STYLES",
    "compose_figure",
    "render_comparison",
    "write_png",
]

logger = logging.getLogger(__name__)

#: White pixels between panels and between rows.
GAP = 4
#: Height of the per-class count strip under a row in the ``outlines`` style.
COUNT_BAR_HEIGHT = 48
#: Drawing styles: ``boxes`` (filled masks, outlines, boxes, labels) or ``outlines`` only.
STYLES = ("boxes", "outlines")
_GT_BAR = (150, 150, 150)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LABEL_SCALE = 0.3
_TITLE_SCALE = 0.45
_WHITE = (255, 255, 255)


def _put_label(
    canvas: np.ndarray,
    text: str,
    x: int,
    y: int,
    color: tuple[int, int, int],
    scale: float,
    taken: np.ndarray | None = None,
) -> None:
    """Write ``text`` with its baseline-left corner near ``(x, y)`` on a filled colour box.

    The box is moved inside the canvas so labels at the border stay readable. With ``taken``
    (a bool map of pixels already under a label) a label that would cover another is left out,
    and the pixels of a drawn one are marked.
    """
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, scale, 1)
    height, width = canvas.shape[:2]
    x = int(min(max(x, 0), max(width - text_w - 2, 0)))
    y = int(min(max(y, text_h + 2), height - baseline))
    top, bottom, right = max(y - text_h - 2, 0), y + baseline, x + text_w + 2
    if taken is not None:
        if taken[top : bottom + 1, x : right + 1].any():
            return
        taken[top : bottom + 1, x : right + 1] = True
    cv2.rectangle(canvas, (x, top), (right, bottom), color, cv2.FILLED)
    cv2.putText(canvas, text, (x + 1, y - 1), _FONT, scale, _WHITE, 1, cv2.LINE_AA)


def _draw_outlines(image_rgb: np.ndarray, instances: list[dict]) -> np.ndarray:
    """Each instance's outline (1 px, no anti-aliasing) in its class colour on a copy."""
    canvas = image_rgb.copy()
    height, width = canvas.shape[:2]
    for instance in sorted(instances, key=lambda item: item.get("score", 1.0)):
        segmentation = instance["segmentation"]
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(
                f"a mask of size {list(segmentation['size'])} does not fit the "
                f"{height}x{width} image"
            )
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
        x, y, w, h = (int(v) for v in mask_util.toBbox(rle))
        if w == 0 or h == 0:
            continue
        crop = decode_rle(segmentation)[y : y + h, x : x + w]
        contours, _ = cv2.findContours(
            crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(x, y)
        )
        cv2.drawContours(canvas, contours, -1, class_color(instance["category_id"] - 1), 1)
    return canvas


def _count_bars(
    predictions: list[dict],
    ground_truth: list[dict] | None,
    width: int,
    class_names: Sequence[str],
) -> np.ndarray:
    """A white strip with, per class, a grey ground-truth bar beside a class-colour prediction
    bar, heights proportional to the counts, and ``name gt/pred`` under them."""
    strip = np.full((COUNT_BAR_HEIGHT, width, 3), 255, np.uint8)
    gt = ground_truth or []
    classes = sorted({i["category_id"] for i in (*predictions, *gt)})
    if not classes:
        return strip
    pred_counts = [sum(p["category_id"] == c for p in predictions) for c in classes]
    gt_counts = [sum(g["category_id"] == c for g in gt) for c in classes]
    top, base = 2, COUNT_BAR_HEIGHT - 14
    scale = (base - top) / max(*pred_counts, *gt_counts, 1)
    slot = width / len(classes)
    bar = max(int(slot / 4), 1)
    for index, category_id in enumerate(classes):
        x = int(index * slot + slot / 2)
        for left, count, color in (
            (x - bar, gt_counts[index], _GT_BAR),
            (x, pred_counts[index], class_color(category_id - 1)),
        ):
            if ground_truth is None and color == _GT_BAR:
                continue
            if count:
                cv2.rectangle(
                    strip, (left, base - int(round(count * scale))), (left + bar - 1, base),
                    color, cv2.FILLED,
                )  # fmt: skip
        counts = f"{gt_counts[index]}/" if ground_truth is not None else ""
        text = f"{class_name(category_id - 1, class_names)} {counts}{pred_counts[index]}"
        cv2.putText(
            strip, text, (int(index * slot) + 2, COUNT_BAR_HEIGHT - 3), _FONT, _LABEL_SCALE,
            (0, 0, 0), 1, cv2.LINE_AA,
        )  # fmt: skip
    return strip


def _draw_instances(
    image_rgb: np.ndarray,
    instances: list[dict],
    alpha: float,
    with_scores: bool,
    class_names: Sequence[str],
) -> np.ndarray:
    """Paint masks (filled and outlined), boxes and labels of ``instances`` on a copy of the image.

    Instances are drawn from the lowest score up, so the most confident ones end on top.
    """
    height, width = image_rgb.shape[:2]
    fill = image_rgb.copy()
    canvas = image_rgb.copy()
    ordered = sorted(instances, key=lambda instance: instance.get("score", 1.0))
    outlines = []
    for instance in ordered:
        segmentation = instance["segmentation"]
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(
                f"a mask of size {list(segmentation['size'])} does not fit the "
                f"{height}x{width} image"
            )
        color = class_color(instance["category_id"] - 1)
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
        x, y, w, h = (int(v) for v in mask_util.toBbox(rle))
        if w == 0 or h == 0:
            continue
        # Paint only inside the mask's box: decoding is one C call, numpy work stays local.
        crop = decode_rle(segmentation)[y : y + h, x : x + w]
        fill[y : y + h, x : x + w][crop] = color
        contours, _ = cv2.findContours(
            crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y)
        )
        outlines.append((contours, color))
    cv2.addWeighted(fill, alpha, canvas, 1.0 - alpha, 0.0, dst=canvas)
    for contours, color in outlines:
        cv2.drawContours(canvas, contours, -1, color, 1, cv2.LINE_AA)
    for instance in ordered:
        x, y, w, h = instance["bbox"]
        top_left = (int(round(x)), int(round(y)))
        bottom_right = (int(round(x + w)) - 1, int(round(y + h)) - 1)
        cv2.rectangle(canvas, top_left, bottom_right, class_color(instance["category_id"] - 1))
    # Labels go to the most confident first; one that would cover another is left out, so a
    # dense image keeps readable labels instead of a solid band of text.
    taken = np.zeros((height, width), bool)
    for instance in reversed(ordered):
        x, y = (int(round(v)) for v in instance["bbox"][:2])
        text = class_name(instance["category_id"] - 1, class_names)
        if with_scores:
            text += f" {instance['score']:.2f}"
        color = class_color(instance["category_id"] - 1)
        _put_label(canvas, text, x, y - 1, color, _LABEL_SCALE, taken)
    return canvas


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    """Write a panel's title in its top-left corner on a dark box."""
    _put_label(panel, title, 2, 2, (40, 40, 40), _TITLE_SCALE)
    return panel


def render_comparison(
    image: np.ndarray,
    predictions: list[dict],
    ground_truth: list[dict] | None = None,
    score_thresh: float = 0.5,
    alpha: float = 0.45,
    style: str = "boxes",
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> np.ndarray:
    """Draw one figure row: original | (ground truth |) predictions.

    Why this signature: predictions in submission format come from a results file or straight
    from a model, so any source can use the same drawing.

    Args:
        image: HxWx3 BGR uint8, as :func:`~cellseg_d2.data.io.read_image` returns it.
        predictions: detections in submission format (``category_id`` 1..N, ``bbox``,
            ``score``, ``segmentation`` RLE of size ``[H, W]``); those below ``score_thresh``
            are left out.
        ground_truth: instances in the same format (``score`` not needed), or None for a
            two-panel row.
        score_thresh: smallest score drawn.
        alpha: opacity of the mask fill (``boxes`` style).
        style: one of :data:`STYLES`; ``outlines`` draws class-coloured outlines only and adds
            the per-class count strip.
        class_names: the name of category id K is ``class_names[K - 1]`` (labels, count bars).

    Returns:
        An RGB uint8 array ``P * W + (P - 1) * GAP`` wide, ``P`` = 2 or 3 panels, ``H`` tall
        (``H + GAP + COUNT_BAR_HEIGHT`` in the ``outlines`` style).

    Raises:
        ValueError: a mask whose size differs from the image's, or an unknown style.
    """
    # Long for its docstring: the code is one short pass over the panels.
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    shown = [p for p in predictions if p["score"] >= score_thresh]
    outlines = style == "outlines"
    panels = [_titled(rgb.copy(), "image")]
    if ground_truth is not None:
        if outlines:
            gt_panel = _draw_outlines(rgb, ground_truth)
        else:
            gt_panel = _draw_instances(rgb, ground_truth, alpha, False, class_names)
        panels.append(_titled(gt_panel, f"ground truth ({len(ground_truth)})"))
    if outlines:
        prediction_panel = _draw_outlines(rgb, shown)
    else:
        prediction_panel = _draw_instances(rgb, shown, alpha, True, class_names)
    panels.append(_titled(prediction_panel, f"predictions ({len(shown)})"))
    gap = np.full((rgb.shape[0], GAP, 3), 255, np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    drawn = np.concatenate(row, axis=1)
    if not outlines:
        return drawn
    separator = np.full((GAP, drawn.shape[1], 3), 255, np.uint8)
    bars = _count_bars(shown, ground_truth, drawn.shape[1], class_names)
    return np.concatenate([drawn, separator, bars])


def compose_figure(rows: list[np.ndarray]) -> np.ndarray:
    """Stack rows top to bottom with :data:`GAP` white pixels between them.

    Why: images differ in size, so narrower rows are padded with white on the right instead of
    being scaled (which would blur thin outlines and change the pixels compared).

    Args:
        rows: RGB uint8 arrays, e.g. from :func:`render_comparison`.

    Returns:
        One RGB uint8 array as wide as the widest row.
    """
    if not rows:
        raise ValueError("compose_figure needs at least one row")
    width = max(row.shape[1] for row in rows)
    parts = []
    for index, row in enumerate(rows):
        if index:
            parts.append(np.full((GAP, width, 3), 255, np.uint8))
        padded = np.full((row.shape[0], width, 3), 255, np.uint8)
        padded[:, : row.shape[1]] = row
        parts.append(padded)
    return np.concatenate(parts, axis=0)


def write_png(figure: np.ndarray, path: str | os.PathLike) -> None:
    """Write an RGB uint8 array as a PNG atomically (a half-written figure never appears).

    Raises:
        ValueError: OpenCV could not encode the array.
    """
    encoded, buffer = cv2.imencode(".png", np.ascontiguousarray(figure[:, :, ::-1]))
    if not encoded:
        raise ValueError(f"could not encode a {figure.shape} array as PNG")
    with atomic_write(path) as handle:
        handle.write(buffer.tobytes())
    logger.info("Wrote %dx%d figure to %s", figure.shape[1], figure.shape[0], path)
