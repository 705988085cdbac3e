"""CellDatasetMapper invariants on synthetic cells."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T

from cellseg_d2.data import read_image
from cellseg_d2.data.mapper import CellDatasetMapper
from cellseg_d2.data.transforms import Rot90Transform
from tests.conftest import INSTANT_CONFIG, REPO_ROOT, instant_cfg


def _mapper(prefix: str, tmp_path, *opts: object, is_train: bool = True) -> CellDatasetMapper:
    cfg = instant_cfg(prefix, tmp_path, *opts)
    return CellDatasetMapper(cfg, is_train=is_train)


def _densest(prefix: str) -> dict:
    return max(DatasetCatalog.get(f"{prefix}_trainval"), key=lambda d: len(d["annotations"]))


@pytest.mark.parametrize("elastic", [0.0, 1.0])
def test_boxes_tight_masks_nonempty_classes_kept(
    cells_prefix: str, tmp_path, elastic: float
) -> None:
    mapper = _mapper(cells_prefix, tmp_path, "INPUT.ELASTIC.PROB", elastic)
    record = _densest(cells_prefix)
    np.random.seed(0)
    for _ in range(3):
        out = mapper(record)
        instances = out["instances"]
        masks = instances.gt_masks.tensor
        assert len(instances) > 0.8 * len(record["annotations"])
        assert masks.flatten(1).any(dim=1).all(), "an empty mask survived"
        tight = instances.gt_masks.get_bounding_boxes().tensor
        assert torch.equal(instances.gt_boxes.tensor, tight)
        assert masks.shape[1:] == out["image"].shape[1:]
        original = {a["category_id"] for a in record["annotations"]}
        assert set(instances.gt_classes.tolist()) <= original


def test_identity_when_augmentations_off(cells_prefix: str, tmp_path) -> None:
    record = _densest(cells_prefix)
    size = min(record["height"], record["width"])
    mapper = _mapper(
        cells_prefix,
        tmp_path,
        "INPUT.ELASTIC.ENABLED", False,
        "INPUT.GEOMETRIC.HFLIP_PROB", 0.0,
        "INPUT.GEOMETRIC.VFLIP_PROB", 0.0,
        "INPUT.GEOMETRIC.ROT90_PROB", 0.0,
        "INPUT.MIN_SIZE_TRAIN", (size,),
        "INPUT.MAX_SIZE_TRAIN", 4096,
    )  # fmt: skip
    out = mapper(record)
    image = read_image(record["file_name"])
    assert torch.equal(out["image"], torch.from_numpy(image).permute(2, 0, 1))
    assert len(out["instances"]) == len(record["annotations"])
    boxes = torch.tensor([a["bbox"] for a in record["annotations"]], dtype=torch.float32)
    boxes[:, 2:] += boxes[:, :2]
    assert torch.allclose(out["instances"].gt_boxes.tensor, boxes)


def test_elastic_changes_pixels_and_is_seeded(cells_prefix: str, tmp_path) -> None:
    record = _densest(cells_prefix)
    size = min(record["height"], record["width"])
    opts = [
        "INPUT.GEOMETRIC.HFLIP_PROB", 0.0,
        "INPUT.GEOMETRIC.VFLIP_PROB", 0.0,
        "INPUT.GEOMETRIC.ROT90_PROB", 0.0,
        "INPUT.MIN_SIZE_TRAIN", (size,),
        "INPUT.MAX_SIZE_TRAIN", 4096,
    ]  # fmt: skip
    plain = _mapper(cells_prefix, tmp_path, "INPUT.ELASTIC.ENABLED", False, *opts)(record)
    warp = _mapper(cells_prefix, tmp_path, "INPUT.ELASTIC.PROB", 1.0, *opts)
    np.random.seed(1)
    first = warp(record)
    np.random.seed(1)
    second = warp(record)
    assert (first["image"] != plain["image"]).float().mean() > 0.1
    assert torch.equal(first["image"], second["image"])
    assert torch.equal(first["instances"].gt_masks.tensor, second["instances"].gt_masks.tensor)
    assert not torch.equal(
        first["instances"].gt_masks.tensor.sum(dim=(1, 2))[:5],
        plain["instances"].gt_masks.tensor.sum(dim=(1, 2))[:5],
    )


def test_inference_mode_drops_annotations(cells_prefix: str, tmp_path) -> None:
    record = _densest(cells_prefix)
    out = _mapper(cells_prefix, tmp_path, is_train=False)(record)
    assert "instances" not in out and "annotations" not in out
    assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3


def test_training_augmentations_hand_torch_no_read_only_array() -> None:
    """Resize then a vertical flip, in a fresh interpreter (torch warns once per process) where a
    warning is an error: the resized, read-only image never reaches ``torch.from_numpy``."""
    code = (
        "import numpy as np\n"
        "from detectron2.data import transforms as T\n"
        "from cellseg_d2.config import load_cellseg_config\n"
        "from cellseg_d2.data.mapper import CellDatasetMapper\n"
        f"cfg = load_cellseg_config({str(INSTANT_CONFIG)!r})\n"
        "cfg.merge_from_list(['INPUT.GEOMETRIC.HFLIP_PROB', 0.0, 'INPUT.GEOMETRIC.VFLIP_PROB',"
        " 1.0, 'INPUT.GEOMETRIC.ROT90_PROB', 0.0])\n"
        "augs = T.AugmentationList(CellDatasetMapper.from_config(cfg)['augmentations'])\n"
        "aug_input = T.AugInput(np.zeros((100, 150, 3), np.uint8))\n"
        "augs(aug_input)\n"
        "assert aug_input.image.shape[0] == 128, aug_input.image.shape  # resized\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _full(crop, height: int, width: int) -> np.ndarray:
    full = np.zeros((height, width), bool)
    if crop is not None:
        h, w = crop.mask.shape
        full[crop.top : crop.top + h, crop.left : crop.left + w] = crop.mask
    return full


@pytest.mark.parametrize("seed", range(6))
def test_crop_transforms_equal_full_mask_transforms(seed: int) -> None:
    from cellseg_d2.data.mapper import _transform_crops
    from cellseg_d2.data.rle import InstanceCrop

    rng = np.random.default_rng(seed)
    height, width = 60, 80
    crops = []
    for _ in range(12):
        h, w = rng.integers(1, 15, size=2)
        top, left = rng.integers(0, height - h), rng.integers(0, width - w)
        mask = rng.random((h, w)) > 0.3
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
        crops.append(InstanceCrop(int(top), int(left), mask))
    new_h, new_w = int(rng.integers(30, 120)), int(rng.integers(30, 120))
    transforms = T.TransformList(
        [
            T.CropTransform(5, 7, 60, 45),
            T.ResizeTransform(45, 60, new_h, new_w),
            T.HFlipTransform(new_w),
            T.VFlipTransform(new_h),
            Rot90Transform(new_h, new_w, int(rng.integers(0, 4))),
        ]
    )
    moved = _transform_crops(transforms, crops, height, width)
    for crop, result in zip(crops, moved):
        full = _full(crop, height, width).astype(np.uint8)
        for tfm in transforms.transforms:  # detectron2's own full-mask transforms (PIL resize)
            full = tfm.apply_segmentation(full)
        assert np.array_equal(_full(result, *full.shape), full.astype(bool))
        if result is not None:  # tight: every border row and column holds a pixel
            assert (
                result.mask[[0, -1]].any(axis=1).all() and result.mask[:, [0, -1]].any(axis=0).all()
            )


def test_elastic_label_layers_round_trip_overlapping_cells() -> None:
    from cellseg_d2.data.mapper import _crops_from_layers, _paint_layers
    from cellseg_d2.data.rle import InstanceCrop

    a = InstanceCrop(2, 2, np.ones((5, 5), bool))
    b = InstanceCrop(4, 4, np.ones((5, 5), bool))  # overlaps a: needs a second layer
    layers = _paint_layers([a, b], 12, 12)
    assert len(layers) == 2
    back = _crops_from_layers(layers, 2)
    assert all(np.array_equal(_full(x, 12, 12), _full(y, 12, 12)) for x, y in zip([a, b], back))


def test_classes_follow_their_masks_when_crop_and_elastic_drop_cells(tmp_path) -> None:
    """Every output instance keeps the class of the source cell it overlaps most."""
    from cellseg_d2.data.rle import encode_mask

    height, width = 64, 64
    annotations, classes = [], []
    for i in range(8):  # a row of 6x6 cells, alternating classes; a crop will cut the first ones
        mask = np.zeros((height, width), bool)
        mask[28:34, 2 + 8 * i : 8 + 8 * i] = True
        annotations.append(
            {"segmentation": encode_mask(mask), "bbox": [2 + 8 * i, 28, 6, 6], "category_id": i % 4}
        )
        classes.append(i % 4)
    from cellseg_d2.data.io import write_tiff

    path = tmp_path / "image.tif"
    write_tiff(path, np.full((height, width, 3), 128, np.uint8))
    record = {"file_name": str(path), "height": height, "width": width, "annotations": annotations}
    cfg = instant_cfg("unused", tmp_path)
    mapper = CellDatasetMapper(
        cfg,
        is_train=True,
        augmentations=[T.CropTransform(20, 0, 44, 64)],
        elastic_prob=1.0,
        elastic_alpha=1.0,
        elastic_sigma=12.0,
    )
    np.random.seed(0)
    out = mapper(record)["instances"]
    assert 0 < len(out) < 8  # the crop removed the first cells
    for mask, cls in zip(out.gt_masks.tensor.numpy(), out.gt_classes.tolist()):
        ys, xs = np.nonzero(mask)
        source = int(round((xs.mean() + 20 - 5) / 8))  # centre x back in the uncropped image
        assert cls == classes[source]


_NO_GEOMETRY = (
    "INPUT.ELASTIC.ENABLED", False,
    "INPUT.GEOMETRIC.HFLIP_PROB", 0.0,
    "INPUT.GEOMETRIC.VFLIP_PROB", 0.0,
    "INPUT.GEOMETRIC.ROT90_PROB", 0.0,
    "INPUT.CROP.ENABLED", False,
)  # fmt: skip


@pytest.mark.parametrize("is_train", [True, False])
def test_scale_resizes_every_image_by_the_factor(
    cells_prefix: str, tmp_path, is_train: bool
) -> None:
    """INPUT.SCALE replaces the short-edge resize: each image (of any size) times the factor,
    masks and boxes with it, in training and in the evaluation loader alike."""
    opts = (*_NO_GEOMETRY, "INPUT.SCALE", 1.5, "INPUT.SCALE_JITTER", 0.0)
    mapper = _mapper(cells_prefix, tmp_path, *opts, is_train=is_train)
    records = DatasetCatalog.get(f"{cells_prefix}_trainval")
    assert len({(r["height"], r["width"]) for r in records}) > 1  # mixed sizes
    for record in records[:3]:
        out = mapper(record)
        expected = (round(record["height"] * 1.5), round(record["width"] * 1.5))
        assert tuple(out["image"].shape[1:]) == expected
        if is_train:
            assert tuple(out["instances"].gt_masks.tensor.shape[1:]) == expected
            areas = out["instances"].gt_masks.tensor.flatten(1).sum(1).float()
            original = torch.tensor([a["area"] for a in record["annotations"]]).float()
            assert areas.sum() / original.sum() == pytest.approx(2.25, rel=0.1)
        else:
            assert (out["height"], out["width"]) == (record["height"], record["width"])


def test_scale_jitter_draws_factors_around_the_scale(cells_prefix: str, tmp_path) -> None:
    opts = (*_NO_GEOMETRY, "INPUT.SCALE", 2.0, "INPUT.SCALE_JITTER", 0.2)
    mapper = _mapper(cells_prefix, tmp_path, *opts)
    record = _densest(cells_prefix)
    np.random.seed(0)
    heights = {mapper(record)["image"].shape[1] for _ in range(6)}
    assert len(heights) > 1
    assert all(1.6 * record["height"] - 1 <= h <= 2.4 * record["height"] + 1 for h in heights)


def test_stain_and_colour_jitter_change_pixels_not_masks(cells_prefix: str, tmp_path) -> None:
    record = _densest(cells_prefix)
    geometry = ("INPUT.GEOMETRIC.ROT90_PROB", 1.0, "INPUT.ELASTIC.ENABLED", False)
    colour = (
        "INPUT.STAIN.ENABLED", True, "INPUT.STAIN.PROB", 1.0,
        "INPUT.COLOR.ENABLED", True, "INPUT.COLOR.PROB", 1.0,
    )  # fmt: skip
    plain = _mapper(cells_prefix, tmp_path, *geometry)
    jittered = _mapper(cells_prefix, tmp_path, *geometry, *colour)
    np.random.seed(3)
    before = plain(record)
    np.random.seed(3)  # the colour draws come last: the same geometry
    after = jittered(record)
    assert before["image"].shape == after["image"].shape
    assert not torch.equal(before["image"], after["image"])
    assert after["image"].dtype == torch.uint8
    assert torch.equal(before["instances"].gt_masks.tensor, after["instances"].gt_masks.tensor)
    assert torch.equal(before["instances"].gt_boxes.tensor, after["instances"].gt_boxes.tensor)
    assert not _mapper(cells_prefix, tmp_path, *colour, is_train=False).augmentations.augs[1:]
