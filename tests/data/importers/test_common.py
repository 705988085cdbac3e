"""Shared importer parts: overlaps, class order, safe names, and all-or-nothing writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.data.importers import ImportOptions, import_dataset
from cellseg_d2.data.importers.common import (
    ClassTable,
    ImportSummary,
    Instance,
    paint_instances,
    safe_name,
)
from cellseg_d2.data.io import write_tiff
from cellseg_d2.errors import CellDataError
from tests.importer_helpers import no_leftovers


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
