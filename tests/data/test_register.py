"""Registration of the cell datasets: split contents, metadata, split files, test ids, config."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from cellseg_d2.config import get_cellseg_cfg
from cellseg_d2.data import register_cell_datasets, register_cell_datasets_from_config, split_of
from cellseg_d2.data.rle import decode_rle
from cellseg_d2.data.synthetic import generate_synthetic_dataset
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES
from tests.conftest import instant_cfg

SPLITS = ("train", "val", "trainval", "test")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cells")
    generate_synthetic_dataset(path, num_train=12, num_test=3, seed=0, min_size=40, max_size=64)
    return path


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Collects the names a test registers and removes them from both catalogs afterwards."""
    names: list[str] = []
    yield names
    for name in set(names):
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)


def _folders(name: str) -> list[str]:
    return [d["folder"] for d in DatasetCatalog.get(name)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fold": 3, "num_folds": 3},
        {"fold": -1, "num_folds": 3},
        {"fold": None, "num_folds": 3},
        {"fold": 0, "num_folds": 1},
        {"fold": 1},
        {"val_fraction": 1.0},
    ],
)
def test_invalid_split_arguments_raise(root: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        register_cell_datasets(root, prefix="bad", **kwargs)
    assert "bad_train" not in DatasetCatalog.list()


def test_register_twice_and_split_contents(root: Path, registered: list[str]) -> None:
    names = register_cell_datasets(root, prefix="t", val_fraction=0.3, seed=5)
    registered += names
    assert names == [f"t_{s}" for s in SPLITS]
    train, val = _folders("t_train"), _folders("t_val")
    registered += register_cell_datasets(root, prefix="t", val_fraction=0.3, seed=5)
    assert (_folders("t_train"), _folders("t_val")) == (train, val)
    assert sorted(train + val) == sorted(_folders("t_trainval")) and not set(train) & set(val)
    assert val and all(split_of(f, 0.3, seed=5) == "val" for f in val)
    registered += register_cell_datasets(root, prefix="t", val_fraction=0.3, seed=6)
    assert _folders("t_val") == [f for f in _folders("t_trainval") if split_of(f, 0.3, 6) == "val"]


def test_metadata_and_split_json_file(root: Path, registered: list[str]) -> None:
    registered += register_cell_datasets(root, prefix="m", val_fraction=0.4, seed=1)
    meta = MetadataCatalog.get("m_val")
    assert meta.thing_classes == list(DEFAULT_CLASS_NAMES)
    assert len(set(meta.thing_colors)) == 4 and all(len(c) == 3 for c in meta.thing_colors)
    assert meta.evaluator_type == "coco" and meta.root == str(root.resolve())
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}
    assert meta.image_root == str(root.resolve() / "train")
    assert MetadataCatalog.get("m_test").image_root == str(root.resolve() / "test_release")
    assert Path(MetadataCatalog.get("m_trainval").json_file).name == "instances_train.json"
    assert MetadataCatalog.get("m_train").json_file != meta.json_file
    dicts = DatasetCatalog.get("m_val")
    coco = json.loads(Path(meta.json_file).read_text())
    assert [i["id"] for i in coco["images"]] == [d["image_id"] for d in dicts]
    assert len(coco["annotations"]) == sum(len(d["annotations"]) for d in dicts)


def test_test_split_carries_the_id_map_ids(root: Path, registered: list[str]) -> None:
    registered += register_cell_datasets(root, prefix="ids")
    id_map = json.loads((root / "test_image_name_to_ids.json").read_text())
    expected = {e["file_name"]: e["id"] for e in id_map}
    dicts = DatasetCatalog.get("ids_test")
    assert {Path(d["file_name"]).name: d["image_id"] for d in dicts} == expected
    assert all("annotations" not in d for d in dicts)


def test_test_split_only_with_test_release(tmp_path: Path, registered: list[str]) -> None:
    generate_synthetic_dataset(tmp_path, num_train=2, num_test=0, min_size=32, max_size=40)
    (tmp_path / "test_release").rmdir()
    names = register_cell_datasets(tmp_path, prefix="notest")
    registered += names
    assert names == ["notest_train", "notest_val", "notest_trainval"]


def test_register_from_config(root: Path, registered: list[str]) -> None:
    cfg = get_cellseg_cfg()
    cfg.DATASETS.CELLS_ROOT = str(root)
    cfg.DATASETS.VAL_FRACTION = 0.25
    cfg.DATASETS.SPLIT_SEED = 2
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    registered += register_cell_datasets_from_config(cfg)
    assert set(registered) == {f"cells_{s}" for s in SPLITS}
    assert _folders("cells_val") == [
        f for f in _folders("cells_trainval") if split_of(f, 0.25, seed=2) == "val"
    ]
    cfg.DATASETS.NUM_FOLDS = 3
    cfg.DATASETS.FOLD = 1
    registered += register_cell_datasets_from_config(cfg, prefix="cv")
    assert _folders("cv_val") == [
        f for f in _folders("cv_trainval") if split_of(f, seed=2, fold=1, num_folds=3) == "val"
    ]


def test_coco_evaluator_scores_ground_truth_as_perfect(
    root: Path, registered: list[str], tmp_path: Path
) -> None:
    """The split json_file, the int image ids and the category mapping all fit COCOEvaluator."""
    registered += register_cell_datasets(root, prefix="ev", val_fraction=0.5, seed=0)
    dicts = DatasetCatalog.get("ev_val")
    evaluator = COCOEvaluator("ev_val", output_dir=str(tmp_path), max_dets_per_image=500)
    evaluator.reset()
    for d in dicts:
        annotations = d["annotations"]
        instances = Instances((d["height"], d["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(annotations))
        instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
        masks = [decode_rle(a["segmentation"]) for a in annotations]
        instances.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP"] == pytest.approx(100.0)


def test_adding_an_image_moves_no_other(tmp_path: Path, registered: list[str]) -> None:
    generate_synthetic_dataset(tmp_path, num_train=8, num_test=0, min_size=32, max_size=40)
    registered += register_cell_datasets(tmp_path, prefix="grow", val_fraction=0.5)
    before = {f: "val" for f in _folders("grow_val")} | {f: "train" for f in _folders("grow_train")}
    source = tmp_path / "train" / next(iter(before))
    target = tmp_path / "train" / "zz-added"
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    registered += register_cell_datasets(tmp_path, prefix="grow", val_fraction=0.5)
    after = {f: "val" for f in _folders("grow_val")} | {f: "train" for f in _folders("grow_train")}
    assert set(after) == set(before) | {"zz-added"}
    assert all(after[f] == split for f, split in before.items())


def test_images_without_cells_are_kept_and_all_empty_data_is_an_error(
    tmp_path: Path, registered: list[str]
) -> None:
    """Empty images train as negatives (the base config turns detectron2's filter off); data
    with no cell at all stop with a CellDataError naming the root, not an AssertionError."""
    root = tmp_path / "data"
    generate_synthetic_dataset(root, num_train=3, num_test=0, min_size=32, max_size=40)
    source = sorted((root / "train").iterdir())[0]
    (root / "train" / "zz-empty").mkdir()
    shutil.copy(source / "image.tif", root / "train" / "zz-empty" / "image.tif")
    registered += register_cell_datasets(root, prefix="neg", val_fraction=0.0)
    cfg = instant_cfg("neg", tmp_path / "out")
    assert cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is False
    dicts = get_detection_dataset_dicts(
        ["neg_train"], filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    assert [d["folder"] for d in dicts][-1] == "zz-empty" and len(dicts) == 4
    for mask in (root / "train").glob("*/class*.tif"):
        mask.unlink()
    with pytest.raises(CellDataError) as info:  # registration converts, so it finds out
        register_cell_datasets(root, prefix="neg", val_fraction=0.0)
    assert str(root.resolve()) in str(info.value) and "none of the 4 training images" in str(
        info.value
    )


def test_registration_writes_the_split_files_and_the_catalog_only_reads(
    tmp_path: Path, registered: list[str]
) -> None:
    """Every json_file exists once registration returns; asking the catalog writes nothing."""
    root = tmp_path / "data"
    generate_synthetic_dataset(root, num_train=4, num_test=1, min_size=32, max_size=40)
    names = register_cell_datasets(root, prefix="files", val_fraction=0.5, seed=3)
    registered += names
    cache = root / ".cellseg_cache"
    files = {path.name: path.stat().st_mtime_ns for path in cache.iterdir()}
    assert {Path(MetadataCatalog.get(name).json_file).name for name in names} == set(files)
    for name in names:
        coco = json.loads(Path(MetadataCatalog.get(name).json_file).read_text())
        assert [d["image_id"] for d in DatasetCatalog.get(name)] == [
            i["id"] for i in coco["images"]
        ]
    assert {path.name: path.stat().st_mtime_ns for path in cache.iterdir()} == files
    registered += register_cell_datasets(root, prefix="files", val_fraction=0.5, seed=3)
    assert {path.name: path.stat().st_mtime_ns for path in cache.iterdir()} == files


def test_bad_data_register_nothing(synthetic_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(synthetic_root, tmp_path / "copy"))
    folder = sorted((root / "train").iterdir())[0]
    (folder / "image.tif").write_bytes(b"not a tiff")
    with pytest.raises(CellDataError, match="image.tif"):
        register_cell_datasets(root, prefix="broken")
    assert not any(name.startswith("broken_") for name in DatasetCatalog.list())


def test_loader_refuses_a_cache_rewritten_with_other_settings(
    synthetic_root: Path, tmp_path: Path, registered: list[str]
) -> None:
    """Two registrations of one root share its conversion cache; the first one's trainval must
    not silently return the second one's classes."""
    root = Path(shutil.copytree(synthetic_root, tmp_path / "copy"))
    registered += register_cell_datasets(root, prefix="first")
    registered += register_cell_datasets(root, prefix="other", class_names=list("abcd"))
    assert DatasetCatalog.get("other_trainval")
    with pytest.raises(CellDataError, match="register the datasets again"):
        DatasetCatalog.get("first_trainval")
    assert DatasetCatalog.get("first_train")  # its own split file, named by its settings
    (root / ".cellseg_cache" / "test_images.json").unlink()
    with pytest.raises(CellDataError, match="test_images.json: missing"):
        DatasetCatalog.get("first_test")
