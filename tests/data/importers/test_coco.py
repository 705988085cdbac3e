"""COCO import: polygons, compressed and uncompressed RLE round trips, errors, real data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from cellseg_d2.data.convert import load_train_coco
from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.data.importers import ImportOptions, import_dataset
from cellseg_d2.data.io import read_instance_mask, write_tiff
from cellseg_d2.data.rle import decode_rle
from cellseg_d2.errors import CellDataError
from tests.conftest import REPO_ROOT, SHARED_DATA, load_tool
from tests.importer_helpers import (
    dataset_info,
    match_cells,
    no_leftovers,
    polygon_mask,
    prepare,
    read_cells,
    star_polygon,
)

H, W = 72, 96


def _uncompressed(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major runs, background first), written by hand."""
    flat = mask.ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    assert sum(counts) == mask.size
    return {"size": list(mask.shape), "counts": counts}


def _build(folder: Path, seed: int, image_id_base: int = 1) -> tuple[Path, dict]:
    """Two images (PNG and TIFF) with cells of two categories (ids 7 and 3) in all three
    segmentation forms; returns the JSON and {file_name: [(class, mask)]} expected."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations, expected = [], [], {}
    for k, file_name in enumerate(["a.png", "sub/b.tif"]):
        pixels = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        (folder / file_name).parent.mkdir(parents=True, exist_ok=True)
        if file_name.endswith(".png"):
            Image.fromarray(pixels).save(folder / file_name)
        else:
            write_tiff(folder / file_name, pixels)
        image_id = image_id_base + k
        images.append({"id": image_id, "file_name": file_name, "height": H, "width": W})
        cells = []
        for n, (cx, cy) in enumerate([(20, 20), (50, 22), (78, 24), (22, 52), (55, 52)]):
            category = 7 if n % 2 == 0 else 3
            points = star_polygon(rng, cx, cy, 11)
            mask = polygon_mask(points, H, W)
            form = n % 3
            if form == 0:
                segmentation = [[v for p in points for v in p]]
            elif form == 1:
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = {"size": [H, W], "counts": rle["counts"].decode()}
            else:
                segmentation = _uncompressed(mask)
            annotations.append(
                {
                    "id": len(annotations) + 100 * image_id,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": segmentation,
                    "iscrowd": 0,
                }
            )
            cells.append((0 if category == 3 else 1, mask))
        expected[file_name] = cells
    crowd = {"id": 999, "image_id": image_id_base, "category_id": 3, "iscrowd": 1}
    crowd["segmentation"] = _uncompressed(np.ones((H, W), bool))
    annotations.append(crowd)
    categories = [{"id": 7, "name": "immune"}, {"id": 3, "name": "tumour"}]
    path = folder / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path, expected


def test_coco_round_trip_polygons_and_rle(tmp_path: Path) -> None:
    source, expected = _build(tmp_path / "src", seed=0)
    test_source, test_expected = _build(tmp_path / "src_test", seed=1, image_id_base=10)
    root = tmp_path / "out"
    summary = import_dataset("coco", source, root, test=test_source)
    # Category names in category-id order: id 3 "tumour" is class1, id 7 "immune" class2.
    assert dataset_info(root) == {
        "class_names": ["tumour", "immune"],
        "pixel_size_um": None,
        "source_format": "coco",
    }
    assert summary.images == {"train": 2, "test": 2}
    assert summary.skipped == {"iscrowd=1: a crowd region, not one cell": 2}
    assert summary.cells == {"tumour": 8, "immune": 12}
    for file_name, cells in expected.items():
        name = Path(file_name).stem
        scores = match_cells(cells, read_cells(root / "train" / name))
        assert min(scores) > 0.99, scores
    for file_name, cells in test_expected.items():
        scores = match_cells(cells, read_cells(root / "test_gt" / Path(file_name).stem))
        assert min(scores) > 0.99, scores
    entries = load_id_map(root / "test_image_name_to_ids.json")
    assert [e["file_name"] for e in entries] == ["a.tif", "b.tif"]
    assert (root / "test_release" / "a.tif").is_file()
    # Ids are unique within an image across the class files.
    folder = root / "train" / "a"
    ids = [set(np.unique(read_instance_mask(p))) - {0} for p in sorted(folder.glob("class*"))]
    assert not ids[0] & ids[1]
    assert prepare(root) == {"tumour": 4, "immune": 6}
    assert no_leftovers(root)


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(segmentation=[[1, 1, 5, 5]]), "annotation id 100 .*2 points"),
        (
            lambda a: a.update(segmentation={"size": [10, 10], "counts": [100]}),
            "annotation id 100 .*RLE size",
        ),
        (lambda a: a.update(category_id=42), "annotation id 100 .*category_id 42"),
    ],
)
def test_coco_refuses_bad_annotations(tmp_path: Path, change, message: str) -> None:
    source, _ = _build(tmp_path / "src", seed=0)
    data = json.loads(source.read_text())
    change(data["annotations"][0])
    _write(source, data)
    root = tmp_path / "out"
    with pytest.raises(CellDataError, match=message):
        import_dataset("coco", source, root)
    assert not root.exists() and no_leftovers(root)


def test_coco_size_mismatch_and_existing_root(tmp_path: Path) -> None:
    source, _ = _build(tmp_path / "src", seed=0)
    data = json.loads(source.read_text())
    data["images"][1]["height"] = H + 1
    _write(source, data)
    with pytest.raises(CellDataError, match=r"sub/b.tif.*is 72x96"):
        import_dataset("coco", source, tmp_path / "out")
    root = tmp_path / "busy"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    source, _ = _build(tmp_path / "src2", seed=0)
    with pytest.raises(CellDataError, match="not empty"):
        import_dataset("coco", source, root)
    import_dataset("coco", source, root, ImportOptions(pixel_size_um=0.5), overwrite=True)
    assert not (root / "keep.txt").exists()
    assert dataset_info(root)["pixel_size_um"] == 0.5
    with pytest.raises(CellDataError, match="holds the source"):
        import_dataset("coco", root / "x.json", root, overwrite=True)


def test_coco_class_names_must_cover_categories(tmp_path: Path) -> None:
    source, _ = _build(tmp_path / "src", seed=0)
    options = ImportOptions(class_names=("immune", "other"))
    with pytest.raises(CellDataError, match="'tumour' is not among"):
        import_dataset("coco", source, tmp_path / "out", options)
    options = ImportOptions(class_names=("other", "immune", "tumour"))
    summary = import_dataset("coco", source, tmp_path / "out", options)
    assert summary.cells == {"other": 0, "immune": 6, "tumour": 4}
    assert sorted(p.name for p in (tmp_path / "out" / "train" / "a").iterdir()) == [
        "class2.tif",
        "class3.tif",
        "image.tif",
    ]


def test_tool_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, _ = _build(tmp_path / "src", seed=0)
    tool = load_tool(REPO_ROOT / "tools" / "import_dataset.py")
    assert tool.main(["--from", "coco", str(source), "--output", str(tmp_path / "out")]) == 0
    assert "cells:           10" in capsys.readouterr().out
    missing = str(tmp_path / "missing.json")
    assert tool.main(["--from", "coco", missing, "--output", str(tmp_path / "o2")]) == 2
    assert "missing.json: COCO JSON file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--from", "coco", str(source), "--output", "x", "--pixel-size", "-1"])
    assert exit_info.value.code == 2


DSB = SHARED_DATA / "dsb2018_subset"


@pytest.mark.skipif(not (DSB / "train").is_dir(), reason=f"real data absent: {DSB}")
def test_dsb2018_exported_to_coco_imports_to_the_same_cache(tmp_path: Path) -> None:
    """Real data: the train masks of dsb2018_subset -> COCO JSON (pycocotools RLE) -> import ->
    the converted cache holds the same masks as the original's."""
    copy = tmp_path / "original"  # the shared folder is read-only: convert a copy
    shutil.copytree(DSB / "train", copy / "train")
    original = load_train_coco(copy, min_area=0, class_names=["nucleus"])
    images, annotations = [], []
    for image in original["images"]:
        images.append({**{k: image[k] for k in ("id", "height", "width")}})
        images[-1]["file_name"] = f"{image['folder']}/image.tif"
    for annotation in original["annotations"]:
        mask = decode_rle(annotation["segmentation"])
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append(
            {
                "id": annotation["id"],
                "image_id": annotation["image_id"],
                "category_id": 1,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "iscrowd": 0,
            }
        )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "nucleus"}],
    }
    source = _write(tmp_path / "dsb.json", coco)
    root = tmp_path / "imported"
    import_dataset("coco", source, root, images=DSB / "train")
    imported = load_train_coco(root, min_area=0, class_names=["nucleus"])
    assert len(imported["images"]) == len(original["images"])
    by_folder = {i["folder"]: i["id"] for i in imported["images"]}

    def masks(coco: dict, image_id: int) -> list[bytes]:
        found = [
            decode_rle(a["segmentation"]) for a in coco["annotations"] if a["image_id"] == image_id
        ]
        return sorted(np.packbits(m).tobytes() for m in found)

    for image in original["images"]:
        new_id = by_folder[f"{image['folder']}_image"]
        assert masks(imported, new_id) == masks(original, image["id"]), image["folder"]
    assert len(imported["annotations"]) == len(original["annotations"])
