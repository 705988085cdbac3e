"""RoundedAnchorGenerator gives torchvision's anchors, bit for bit, where detectron2's differ."""

from __future__ import annotations

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator, build_anchor_generator
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from cellseg_d2.config import get_cellseg_cfg
from cellseg_d2.modeling import RoundedAnchorGenerator

IMAGE = 64
STRIDES = (4, 8, 16)
ASPECT_RATIOS = (0.5, 1.0, 2.0)


def _features() -> list[torch.Tensor]:
    return [torch.zeros(1, 2, IMAGE // s, IMAGE // s) for s in STRIDES]


def _torchvision_anchors(sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """torchvision's anchors of each level (one size per level, as its FPN models use)."""
    generator = AnchorGenerator(tuple((s,) for s in sizes), (ASPECT_RATIOS,) * len(sizes))
    images = ImageList(torch.zeros(1, 3, IMAGE, IMAGE), [(IMAGE, IMAGE)])
    anchors = generator(images, _features())[0]  # all levels of the one image, concatenated
    counts = [(IMAGE // s) ** 2 * len(ASPECT_RATIOS) for s in STRIDES]
    return list(anchors.split(counts))


def _detectron2_anchors(cls: type, sizes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = cls(
        sizes=[[s] for s in sizes],
        aspect_ratios=[list(ASPECT_RATIOS)],
        strides=list(STRIDES),
        offset=0.0,
    )
    return [boxes.tensor for boxes in generator(_features())]


@pytest.mark.parametrize("sizes", [(8, 16, 32), (32, 64, 128), (12, 24, 48)])
def test_anchors_equal_torchvision(sizes: tuple[int, ...]) -> None:
    expected = _torchvision_anchors(sizes)
    rounded = _detectron2_anchors(RoundedAnchorGenerator, sizes)
    for level, (ours, theirs) in enumerate(zip(rounded, expected)):
        assert ours.shape == theirs.shape, level
        assert torch.equal(ours, theirs), level
    # detectron2's own generator keeps fractional half-widths, so it differs for ratio != 1.
    default = _detectron2_anchors(DefaultAnchorGenerator, sizes)
    assert not all(torch.equal(d, t) for d, t in zip(default, expected))
    assert all(torch.allclose(d, t, atol=0.5) for d, t in zip(default, expected))


def test_cell_anchors_are_whole_pixels_in_detectron2s_order() -> None:
    generator = RoundedAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[4])
    cell = generator.generate_cell_anchors(sizes=(32, 64), aspect_ratios=(0.5, 2.0))
    assert torch.equal(cell, cell.round())
    widths, heights = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    # sizes outer, aspect ratios (height / width) inner: 32@0.5, 32@2, 64@0.5, 64@2
    assert (heights / widths).tolist() == pytest.approx([0.5, 2.0, 0.5, 2.0], rel=0.05)
    assert (widths * heights).sqrt().tolist() == pytest.approx([32, 32, 64, 64], rel=0.05)


def test_selected_by_config_name() -> None:
    cfg = get_cellseg_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "RoundedAnchorGenerator"
    shapes = [ShapeSpec(channels=2, stride=s) for s in (4, 8, 16, 32, 64)]
    assert isinstance(build_anchor_generator(cfg, shapes), RoundedAnchorGenerator)
