"""Shared importer parts: dataset.json, pixel-size metadata, overlaps, class order, writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellseg_d2.data.dataset_info import DatasetInfo, read_dataset_info, write_dataset_info
from cellseg_d2.data.importers import ImportOptions, import_dataset
from cellseg_d2.data.importers.common import (
    ClassTable,
    ImportSummary,
    Instance,
    paint_instances,
    safe_name,
)
from cellseg_d2.data.importers.metadata import pixel_size_of
from cellseg_d2.data.importers.raster import rings_to_mask
from cellseg_d2.data.io import write_tiff
from cellseg_d2.errors import CellDataError
from tests.importer_helpers import no_leftovers


def test_dataset_info_round_trip_and_checks(tmp_path: Path) -> None:
    assert read_dataset_info(tmp_path) is None
    write_dataset_info(tmp_path, DatasetInfo(("a", "b"), 0.5, "coco"))
    assert read_dataset_info(tmp_path) == DatasetInfo(("a", "b"), 0.5, "coco")
    write_dataset_info(tmp_path, DatasetInfo(("a",)))
    assert json.loads((tmp_path / "dataset.json").read_text())["pixel_size_um"] is None
    for bad, message in [
        ({"class_names": ["a", "a"]}, "distinct"),
        ({"class_names": ["a"], "pixel_size_um": -1}, "positive"),
        ({"class_names": ["a"], "pixel_size_um": "0.5"}, "number or null"),
        ([1, 2], "JSON object"),
    ]:
        (tmp_path / "dataset.json").write_text(json.dumps(bad))
        with pytest.raises(CellDataError, match=message):
            read_dataset_info(tmp_path)


def test_pixel_size_from_tiff_metadata(tmp_path: Path) -> None:
    pixels = np.zeros((16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "ome.ome.tif", pixels, metadata={"PhysicalSizeX": 0.5})
    tifffile.imwrite(
        tmp_path / "nm.ome.tif",
        pixels,
        metadata={"PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm"},
    )
    tifffile.imwrite(
        tmp_path / "ij.tif", pixels, imagej=True, resolution=(4, 4), metadata={"unit": "micron"}
    )
    tifffile.imwrite(
        tmp_path / "cm.tif", pixels, resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )
    tifffile.imwrite(tmp_path / "inch.tif", pixels, resolution=(72, 72), resolutionunit="INCH")
    write_tiff(tmp_path / "plain.tif", pixels)
    assert pixel_size_of(tmp_path / "ome.ome.tif") == pytest.approx(0.5)
    assert pixel_size_of(tmp_path / "nm.ome.tif") == pytest.approx(0.25)
    assert pixel_size_of(tmp_path / "ij.tif") == pytest.approx(0.25)
    assert pixel_size_of(tmp_path / "cm.tif") == pytest.approx(0.5)
    assert pixel_size_of(tmp_path / "inch.tif") is None
    assert pixel_size_of(tmp_path / "plain.tif") is None


def test_paint_instances_smaller_on_top() -> None:
    big = Instance(0, 0, 0, np.ones((10, 10), bool), "big")
    small = Instance(0, 2, 2, np.ones((3, 3), bool), "small")
    hidden = Instance(0, 2, 2, np.ones((3, 3), bool), "hidden")  # same pixels, painted later
    other = Instance(1, 0, 0, np.ones((4, 4), bool), "other class")
    outside = Instance(0, 0, 0, np.zeros((0, 0), bool), "outside")
    summary = ImportSummary("test")
    labels = paint_instances([big, small, hidden, other, outside], 12, 12, summary)
    assert sorted(labels) == [0, 1]
    assert np.count_nonzero(labels[0] == 1) == 100 - 9  # big lost the small cell's pixels
    assert np.count_nonzero(labels[0] == 2) + np.count_nonzero(labels[0] == 3) == 9
    assert np.count_nonzero(labels[1] == 4) == 16  # another class keeps its overlap
    assert summary.trimmed == 1
    assert summary.skipped == {
        "covered by smaller cells of its class": 1,
        "no pixel inside the image": 1,
    }


def test_class_table_rules() -> None:
    table = ClassTable(ImportOptions(unclassified="other"))
    for label in ("type10", "type2", None, "b"):
        table.index(label, "here")
    names, mapping = table.final_order()
    assert names == ["b", "type2", "type10", "other"]
    assert [names[mapping[i]] for i in range(4)] == ["other", "type10", "type2", "b"]
    fixed = ClassTable(ImportOptions(class_names=("x", "y")))
    assert fixed.type_index(2, "here") == 1
    with pytest.raises(CellDataError, match="here: type 3"):
        fixed.type_index(3, "here")
    with pytest.raises(CellDataError, match="here: object without a class"):
        fixed.index(None, "here")
    assert ClassTable(ImportOptions(skip_unclassified=True)).index("", "here") is None
    assert safe_name("../a b/.c") == "a_b_.c"
    assert safe_name(".hidden") == "hidden"
    assert safe_name("..") == "image"


def test_rings_to_mask_holes_and_clipping() -> None:
    square = np.array([[-2, -2], [6, -2], [6, 6], [-2, 6]], float)
    hole = np.array([[2, 2], [4, 2], [4, 4], [2, 4]], float)
    top, left, crop = rings_to_mask([square], [hole], 4, 5)
    assert (top, left, crop.shape) == (0, 0, (4, 5))
    expected = np.ones((4, 5), bool)
    expected[2:4, 2:4] = False
    assert np.array_equal(crop, expected)
    assert rings_to_mask([square + 50], [], 4, 5)[2].size == 0


def test_failed_overwrite_keeps_the_old_dataset(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b"):
        write_tiff(src / f"{name}.tif", np.zeros((20, 20), np.uint8))
    labels = np.zeros((20, 20), np.uint8)
    labels[2:8, 2:8] = 1
    write_tiff(src / "a_masks.tif", labels)
    write_tiff(src / "b_masks.tif", labels)
    root = tmp_path / "out"
    import_dataset("labels", src, root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    write_tiff(src / "b_masks.tif", labels[:10])  # b fails after a was written
    with pytest.raises(CellDataError, match="b_masks.tif: annotation is 10x20"):
        import_dataset("labels", src, root, overwrite=True)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert no_leftovers(root)
    with pytest.raises(CellDataError, match="does not take --labels"):
        import_dataset("coco", src / "x.json", tmp_path / "o", labels=src)
