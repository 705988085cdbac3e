"""COCO RLE helpers: the same strings as pycocotools, run lengths read without decoding, and
corrupt strings refused with a message."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_util

from cellseg_d2.data.rle import (
    InstanceCrop,
    check_rle,
    decode_rle,
    encode_crops,
    encode_mask,
    label_image_to_instances,
    rle_run_lengths,
    tight_crop,
)


def _runs(mask: np.ndarray) -> list[int]:
    """COCO run lengths of a mask computed in numpy: down the columns, background first."""
    flat = mask.flatten(order="F").astype(bool)
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def rle_string(runs: list[int]) -> str:
    """The compressed string of given run lengths, from pycocotools."""
    return mask_util.frPyObjects({"size": [1, sum(runs)], "counts": runs}, 1, sum(runs))[
        "counts"
    ].decode()


# ---- moved from tests/data/test_convert.py --------------------------------------------------


def test_label_image_to_instances_matches_pycocotools_on_random_labels() -> None:
    rng = np.random.default_rng(0)
    for trial in range(60):
        height, width = rng.integers(1, 30, 2)
        labels = rng.integers(0, 5, (height, width)) * (rng.random((height, width)) < 0.6)
        if trial % 3 == 0:
            labels = labels * 1_000_003  # huge sparse ids take the relabelling path
        if trial % 4 == 0:
            labels[:, : min(2, width)] = 3  # full-height runs across column boundaries
        instances = label_image_to_instances(labels)
        assert [i.instance_id for i in instances] == sorted(set(labels[labels > 0].tolist()))
        for instance in instances:
            mask = labels == instance.instance_id
            reference = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert instance.rle["counts"] == reference["counts"].decode()
            assert instance.rle["size"] == [height, width]
            ys, xs = np.nonzero(mask)
            assert instance.bbox == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            assert instance.area == mask.sum()


def test_label_image_without_background_and_empty() -> None:
    assert label_image_to_instances(np.zeros((4, 4), np.int64)) == []
    (only,) = label_image_to_instances(np.full((3, 2), 7, np.int64))
    assert only.instance_id == 7 and only.bbox == [0, 0, 2, 3] and only.area == 6
    with pytest.raises(ValueError, match="integers"):
        label_image_to_instances(np.zeros((2, 2), np.float64))


def test_encode_decode_round_trip_and_uncompressed_counts() -> None:
    mask = np.zeros((6, 5), bool)
    mask[1:4, 2:5] = True
    rle = encode_mask(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [6, 5]
    assert (decode_rle(rle) == mask).all()
    assert (decode_rle({**rle, "counts": rle["counts"].encode()}) == mask).all()
    uncompressed = {"size": [6, 5], "counts": [13, 3, 3, 3, 3, 3, 2]}
    assert (decode_rle(uncompressed) == mask).all()


def test_encode_crops_matches_pycocotools_on_random_crops() -> None:
    """Batched crop encoding equals encoding the pasted full-size mask, including crops that
    span every row (runs joined across columns) and empty crops."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        crops = []
        for _ in range(int(rng.integers(0, 6))):
            h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            crops.append(InstanceCrop(top, left, rng.random((h, w)) > rng.random()))
        for crop, rle in zip(crops, encode_crops(crops, height, width)):
            full = np.zeros((height, width), bool)
            h, w = crop.mask.shape
            full[crop.top : crop.top + h, crop.left : crop.left + w] = crop.mask
            assert rle == encode_mask(full)


# ---- known strings --------------------------------------------------------------------------


def _block(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[rows, cols] = True
    return mask


KNOWN = [
    # (mask, counts, run lengths): written out by hand, equal to what pycocotools gives
    (_block(3, 3, slice(1, 2), slice(1, 2)), "414", [4, 1, 4]),
    # from the fourth run on, the string holds the difference to the run two places before
    (_block(4, 5, slice(1, 3), slice(1, 4)), "5220003", [5, 2, 2, 2, 2, 2, 5]),
    (np.ones((2, 2), bool), "04", [0, 4]),
    (np.ones((1, 100), bool), "0T3", [0, 100]),
    # 20 x 40 block in a 100 x 100 image: multi-character runs and a negative difference
    (
        _block(100, 100, slice(40, 60), slice(30, 70)),
        "Po2d0`2" + "0" * 77 + "`l2",
        [3040] + [20, 80] * 39 + [20, 3040],
    ),
]


@pytest.mark.parametrize("mask, counts, runs", KNOWN, ids=["dot", "block", "full", "row", "big"])
def test_known_masks_give_known_strings(mask: np.ndarray, counts: str, runs: list[int]) -> None:
    reference = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert reference["counts"].decode() == counts  # the table is pycocotools' own output
    rle = encode_mask(mask)
    assert rle == {"size": list(mask.shape), "counts": counts}
    assert rle_run_lengths(counts) == runs == _runs(mask)
    assert rle_run_lengths(counts.encode()) == runs
    check_rle(rle)
    check_rle({"size": list(mask.shape), "counts": runs})
    decoded = decode_rle(rle)
    assert decoded.dtype == bool and np.array_equal(decoded, mask)
    (crop_rle,) = encode_crops([tight_crop(0, 0, mask)], *mask.shape)
    assert crop_rle == rle


def test_encode_mask_treats_any_non_zero_as_foreground() -> None:
    values = np.array([[0, 2], [-1, 0], [0, 255]], np.int16)
    assert np.array_equal(decode_rle(encode_mask(values)), values != 0)
    assert encode_mask(np.zeros((2, 3))) == {"size": [2, 3], "counts": "6"}
    with pytest.raises(ValueError, match=r"2-D mask, got shape \(1, 2, 2\)"):
        encode_mask(np.zeros((1, 2, 2)))


def test_run_lengths_match_numpy_on_random_masks() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        height, width = (int(v) for v in rng.integers(1, 60, 2))
        mask = rng.random((height, width)) < rng.random()
        counts = encode_mask(mask)["counts"]
        assert rle_run_lengths(counts) == _runs(mask)


# ---- corrupt strings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts, problem",
    [
        ("41~", "character '~' is not a COCO RLE character (0..o)"),
        ("4 1", "character ' ' is not a COCO RLE character"),
        ("oooooooooo1", "run 0 is longer than 7 characters"),
        ("4o", "the string ends in the middle of a run"),
    ],
)
def test_run_lengths_refuse_garbage(counts: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        rle_run_lengths(counts)
    assert problem in str(info.value)


def test_negative_difference_gives_a_negative_run_that_check_rle_refuses() -> None:
    # "M" is -3 (sign bit set): the fourth run is -3 + the second run (1) = -2.
    assert rle_run_lengths("111M") == [1, 1, 1, -2]
    with pytest.raises(ValueError, match=r"^run 3 has a negative length \(-2\)$"):
        check_rle({"size": [1, 1], "counts": "111M"})
    with pytest.raises(ValueError, match=r"^run 1 has a negative length \(-4\)$"):
        check_rle({"size": [2, 2], "counts": [8, -4]})


def test_check_rle_wants_runs_that_tile_the_image() -> None:
    check_rle({"size": [3, 3], "counts": "414"})
    check_rle({"size": [3, 3], "counts": b"414"})
    check_rle({"size": ["3", "3"], "counts": [9]})
    with pytest.raises(ValueError, match=r"^the run lengths add up to 9 pixels, not 3x4 = 12$"):
        check_rle({"size": [3, 4], "counts": "414"})
    with pytest.raises(ValueError, match="add up to 8 pixels, not 3x3 = 9"):
        check_rle({"size": [3, 3], "counts": [4, 1, 3]})
    with pytest.raises(ValueError, match="longer than 7 characters"):
        check_rle({"size": [3, 3], "counts": "oooooooooo1"})


# ---- crops and label images -----------------------------------------------------------------


def test_tight_crop_trims_to_the_pixels_and_copies() -> None:
    mask = np.zeros((6, 7), bool)
    mask[2, 3] = mask[4, 5] = True
    crop = tight_crop(10, 20, mask)
    assert (crop.top, crop.left) == (12, 23)
    assert np.array_equal(
        crop.mask, [[True, False, False], [False, False, False], [False, False, True]]
    )
    crop.mask[0, 0] = False
    assert mask[2, 3]  # the crop is a copy, not a view
    assert tight_crop(0, 0, np.zeros((3, 3), bool)) is None
    assert tight_crop(0, 0, np.zeros((0, 0), bool)) is None


def test_encode_crops_of_nothing_and_of_a_full_image() -> None:
    assert encode_crops([], 5, 5) == []
    full = InstanceCrop(0, 0, np.ones((3, 4), bool))
    corner = InstanceCrop(2, 3, np.ones((1, 1), bool))
    assert encode_crops([full, corner], 3, 4) == [
        {"size": [3, 4], "counts": "0<"},
        {"size": [3, 4], "counts": rle_string([11, 1])},
    ]


def test_label_image_ids_boxes_and_areas_exactly() -> None:
    labels = np.array(
        [
            [0, 0, 5, 5],
            [9, 0, 5, 0],
            [0, 0, 0, 9],
        ],
        np.uint16,
    )
    five, nine = label_image_to_instances(labels)
    assert (five.instance_id, five.bbox, five.area) == (5, [2, 0, 2, 2], 3)
    assert (nine.instance_id, nine.bbox, nine.area) == (9, [0, 1, 4, 2], 2)  # two pieces, one cell
    assert five.rle == {"size": [3, 4], "counts": rle_string([6, 2, 1, 1, 2])}
    assert np.array_equal(decode_rle(nine.rle), labels == 9)


def test_label_image_relabels_huge_ids_without_background() -> None:
    labels = np.array([[2**40, 2**40], [2**40 + 1, 2**40]], np.int64)  # no 0 anywhere
    big, bigger = label_image_to_instances(labels)
    assert (big.instance_id, big.area, bigger.instance_id, bigger.area) == (2**40, 3, 2**40 + 1, 1)
    assert isinstance(big.instance_id, int)


@pytest.mark.parametrize(
    "labels, problem",
    [
        (np.zeros((2, 2, 1), np.int64), "must be 2-D"),
        (np.array([[0, -1]]), "negative ids"),
        (np.zeros((2, 2), bool), "must hold integers"),
    ],
)
def test_label_image_refuses_bad_arrays(labels: np.ndarray, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        label_image_to_instances(labels)
