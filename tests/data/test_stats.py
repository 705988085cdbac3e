"""Dataset statistics and config advice (cellseg_d2.data.stats, tools/dataset_stats.py)."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from cellseg_d2.config import finish_config, get_cellseg_cfg
from cellseg_d2.data.io import write_tiff
from cellseg_d2.data.stats import (
    compute_dataset_stats,
    format_stats,
    median_train_diameter,
    stats_from_coco,
    write_stats_json,
)
from cellseg_d2.errors import CellDataError

TOOL = Path(__file__).resolve().parents[2] / "tools" / "dataset_stats.py"
NAMES = ("tumour", "immune", "stroma", "giant")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Three images: 30 lymphocyte-sized squares, 2 large class4 blobs, and one without cells."""
    image = np.full((64, 80, 4), 255, np.uint8)
    many = np.zeros((64, 80), np.float64)
    for k in range(30):
        y, x = divmod(k, 6)
        many[y * 12 + 1 : y * 12 + 5, x * 12 + 1 : x * 12 + 5] = k + 1  # 16 px each
    big = np.zeros((64, 80), np.float64)
    big[0:20, 0:20] = 100  # 400 px
    big[30:60, 40:70] = 200  # 900 px
    for name, masks in (("a", {"class2.tif": many}), ("b", {"class4.tif": big}), ("c", {})):
        write_tiff(tmp_path / "train" / name / "image.tif", image[: 40 if name == "c" else 64])
        for mask_name, labels in masks.items():
            write_tiff(tmp_path / "train" / name / mask_name, labels)
    return tmp_path


def test_counts_distributions_and_sizes(root: Path) -> None:
    stats = compute_dataset_stats(root, class_names=NAMES)
    assert stats["images"] == 3 and stats["empty_images"] == 1 and stats["instances"] == 32
    assert stats["instances_per_class"] == {"tumour": 0, "immune": 30, "stroma": 0, "giant": 2}
    per_image = stats["instances_per_image"]
    assert (per_image["max"], per_image["min"], per_image["p50"]) == (30, 0, 2)
    assert per_image["mean"] == pytest.approx(32 / 3)
    assert stats["instance_area"]["immune"]["p50"] == 16
    assert stats["instance_area"]["giant"]["max"] == 900
    assert stats["instance_area"]["tumour"] is None
    assert stats["equivalent_diameter"]["immune"]["p50"] == pytest.approx(
        2 * math.sqrt(16 / math.pi)
    )
    assert (stats["image_height"]["min"], stats["image_height"]["max"]) == (40, 64)
    assert stats["image_width"]["p50"] == 80


def test_advice_covers_sizes_and_densest_image(root: Path) -> None:
    advice = compute_dataset_stats(root)["advice"]
    sizes = [level[0] for level in advice["MODEL.ANCHOR_GENERATOR.SIZES"]]
    assert sizes == [sizes[0] * 2**k for k in range(5)]
    assert sizes[0] <= 4 and sizes[-1] >= 30  # sides 4 (16 px) .. 30 (900 px)
    covering = advice["anchor_sizes_covering_p1_p99"]
    assert covering[0] <= 4 <= 30 <= covering[-1]
    assert advice["TEST.DETECTIONS_PER_IMAGE"] > 30
    assert advice["TEST.DETECTIONS_PER_IMAGE"] % 100 == 0
    assert advice["MODEL.RPN.POST_NMS_TOPK_TEST"] >= advice["TEST.DETECTIONS_PER_IMAGE"]
    assert advice["MODEL.RPN.PRE_NMS_TOPK_TEST"] >= advice["MODEL.RPN.POST_NMS_TOPK_TEST"]


def test_advice_names_the_cell_diameter_and_its_scale(root: Path) -> None:
    stats = compute_dataset_stats(root, class_names=NAMES)
    advice = stats["advice"]
    median = 2 * math.sqrt(16 / math.pi)  # 30 of the 32 instances have 16 px
    assert advice["INPUT.CELL_DIAMETER"] == 32.0
    assert advice["input_scale_at_cell_diameter"] == round(32.0 / median, 4)
    # Scaled by ~7.1, the 30 px side of the 900 px blob exceeds the 128 px anchor.
    assert any("NOT within the cell anchors" in note for note in advice["notes"])
    report = format_stats(stats)
    assert "INPUT.CELL_DIAMETER = 32.0" in report and "INPUT.SCALE it gives: 7.0898" in report


def test_median_train_diameter_from_registered_dicts_gives_the_exact_factor() -> None:
    """Discs of diameter 10, 20, 40 (and a crowd region, left out) over two datasets."""

    def disc(diameter: float, crowd: int = 0) -> dict:
        return {"area": math.pi * (diameter / 2) ** 2, "iscrowd": crowd}

    splits = {
        "scale_test_a": [{"annotations": [disc(10), disc(40)]}, {"annotations": []}],
        "scale_test_b": [{"annotations": [disc(20), disc(500, crowd=1)]}],
    }
    for name, dicts in splits.items():
        DatasetCatalog.register(name, lambda dicts=dicts: dicts)
    try:
        cfg = get_cellseg_cfg()
        cfg.MODEL.DEVICE = "cpu"
        cfg.DATASETS.TRAIN = tuple(splits)
        assert median_train_diameter(cfg) == pytest.approx(20.0)
        cfg.INPUT.CELL_DIAMETER = 30.0
        finished = finish_config(cfg, train_diameter=median_train_diameter)
        assert finished.INPUT.SCALE == pytest.approx(1.5)
        cfg.DATASETS.TRAIN = ("scale_test_b",)
        DatasetCatalog.remove("scale_test_b")
        DatasetCatalog.register("scale_test_b", lambda: [{"annotations": []}])
        assert math.isnan(median_train_diameter(cfg))
    finally:
        for name in splits:
            DatasetCatalog.remove(name)


def test_rare_class_gets_a_note() -> None:
    coco = {
        "images": [{"id": 1, "height": 60, "width": 60}],
        "annotations": [
            {"image_id": 1, "category_id": 1 + (i == 0), "area": 30} for i in range(200)
        ],
        "categories": [{"id": 1, "name": "common"}, {"id": 2, "name": "rare"}],
    }
    notes = stats_from_coco(coco)["advice"]["notes"]
    assert any("'rare' is rare (1 of 200" in note for note in notes), notes
    assert not any("'common'" in note for note in notes)


def test_stats_reject_unknown_class_file(root: Path) -> None:
    with pytest.raises(CellDataError, match="class4.tif.*DATASETS.CLASS_NAMES"):
        compute_dataset_stats(root, class_names=NAMES[:3])


def test_dense_images_raise_the_detection_budget() -> None:
    coco = {
        "images": [{"id": 1, "height": 600, "width": 600}],
        "annotations": [{"image_id": 1, "category_id": 2, "area": 50 + i % 7} for i in range(731)],
        "categories": [{"id": k, "name": f"class{k}"} for k in (1, 2, 3, 4)],
    }
    advice = stats_from_coco(coco)["advice"]
    assert advice["TEST.DETECTIONS_PER_IMAGE"] == 900  # 731 * 1.2 = 877.2, rounded up
    assert advice["MODEL.RPN.POST_NMS_TOPK_TEST"] == 1800


def test_report_and_json(root: Path, tmp_path: Path) -> None:
    stats = compute_dataset_stats(root, class_names=NAMES)
    text = format_stats(stats)
    for expected in ("images: 3", "immune 30", "equivalent diameter", "TEST.DETECTIONS_PER_IMAGE"):
        assert expected in text
    # Advice per class by name: the two classes without instances, the rare one (2 of 32 is
    # above 1%, so not called rare).
    assert "note: class 'tumour' has no instance" in text
    assert "note: class 'stroma' has no instance" in text
    assert "'giant'" not in text
    write_stats_json(stats, tmp_path / "out" / "stats.json")
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == json.loads(
        json.dumps(stats)
    )


def test_tool(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main = runpy.run_path(str(TOOL))["main"]
    out = tmp_path / "s.json"
    assert main(["--root", str(root), "--json", str(out), "--class-names", ",".join(NAMES)]) == 0
    assert "suggested config" in capsys.readouterr().out
    assert json.loads(out.read_text())["instances_per_class"]["immune"] == 30
    # Two class names, but b/class4.tif exists: exit 2 naming the file and the flag.
    assert main(["--root", str(root), "--class-names", "x,y"]) == 2
    err = capsys.readouterr().err
    assert "b/class4.tif" in err and "--class-names" in err
    with pytest.raises(SystemExit) as info:
        main(["--root", str(root), "--class-names", "x,x"])
    assert info.value.code == 2 and "distinct" in capsys.readouterr().err
    write_tiff(root / "train" / "a" / "class1.tif", np.full((64, 80), 0.5))
    assert main(["--root", str(root)]) == 2
    assert "a/class1.tif" in capsys.readouterr().err
