"""Any number of classes: DATASETS.CLASS_NAMES through data, model head, training and prediction."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from cellseg_d2.data import register_cell_datasets, register_cell_datasets_from_config
from cellseg_d2.data.io import read_image
from cellseg_d2.data.synthetic import generate_synthetic_dataset
from cellseg_d2.engine import CellTrainer
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.predictor import CellPredictor
from tests.conftest import SHARED_DATA, instant_cfg


@pytest.fixture()
def registered() -> Iterator[list[str]]:
    """Dataset names registered by a test, removed afterwards."""
    names: list[str] = []
    yield names
    for name in set(names):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.parametrize("num_classes", [1, 6])
def test_synthetic_dataset_trains_and_predicts_with_n_classes(
    num_classes: int, tmp_path: Path, registered: list[str]
) -> None:
    root = tmp_path / "data"
    summary = generate_synthetic_dataset(
        root, num_train=4, num_test=2, seed=1, min_size=96, max_size=128, num_classes=num_classes
    )
    assert sorted(summary["instances_per_class"]) == list(range(1, num_classes + 1))
    names = [f"type{k}" for k in range(1, num_classes + 1)]
    prefix = f"n{num_classes}"
    registered += register_cell_datasets(root, prefix=prefix, val_fraction=0.0, class_names=names)
    dicts = DatasetCatalog.get(f"{prefix}_train")
    categories = {a["category_id"] for d in dicts for a in d["annotations"]}
    assert categories and categories <= set(range(num_classes))
    assert MetadataCatalog.get(f"{prefix}_train").thing_classes == names
    assert len(MetadataCatalog.get(f"{prefix}_train").thing_colors) == num_classes

    cfg = instant_cfg(prefix, tmp_path / "out", "SOLVER.MAX_ITER", 3, "TEST.EVAL_PERIOD", 0)
    cfg.merge_from_list(["DATASETS.TEST", (), "SOLVER.BEST_CHECKPOINT.METRIC", ""])
    cfg.merge_from_list(["DATASETS.CLASS_NAMES", names, "MODEL.ROI_HEADS.NUM_CLASSES", num_classes])
    trainer = CellTrainer(cfg)
    assert trainer.model.roi_heads.box_predictor.cls_score.out_features == num_classes + 1
    trainer.resume_or_load(resume=False)
    trainer.train()

    cfg.defrost()
    cfg.merge_from_list(["MODEL.WEIGHTS", str(tmp_path / "out" / "model_final.pth")])
    cfg.merge_from_list(["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0])
    predictor = CellPredictor(cfg)
    images = [read_image(path) for path in sorted((root / "test_release").glob("*.tif"))]
    detections = [d for per_image in predictor(images) for d in per_image]
    assert detections, "a score threshold of 0 must keep some detections"
    assert {d.category for d in detections} <= set(range(num_classes))


def test_class_file_beyond_the_names_is_an_error_naming_file_and_key(
    synthetic_root: Path, tmp_path: Path, registered: list[str]
) -> None:
    root = Path(shutil.copytree(synthetic_root, tmp_path / "copy"))
    folder = next(p for p in sorted((root / "train").iterdir()) if (p / "class1.tif").is_file())
    shutil.copy(folder / "class1.tif", folder / "class5.tif")
    with pytest.raises(CellDataError) as info:  # registration converts, so it finds out
        register_cell_datasets(root, prefix="c5")
    assert "c5_trainval" not in DatasetCatalog.list()
    message = str(info.value)
    assert f"{folder.name}/class5.tif" in message and "DATASETS.CLASS_NAMES" in message


def test_num_classes_mismatch_is_an_error_naming_both_keys(
    synthetic_root: Path, tmp_path: Path, registered: list[str]
) -> None:
    cfg = instant_cfg("mismatch", tmp_path)
    cfg.merge_from_list(["DATASETS.CELLS_ROOT", str(synthetic_root)])
    cfg.merge_from_list(["DATASETS.CLASS_NAMES", ["nucleus"], "MODEL.ROI_HEADS.NUM_CLASSES", 4])
    with pytest.raises(CellDataError) as info:
        register_cell_datasets_from_config(cfg, prefix="mismatch")
    message = str(info.value)
    assert "MODEL.ROI_HEADS.NUM_CLASSES is 4" in message and "DATASETS.CLASS_NAMES" in message
    assert "mismatch_train" not in DatasetCatalog.list()
    cfg.merge_from_list(["DATASETS.CLASS_NAMES", ["a", "a", "b", "c"]])
    with pytest.raises(CellDataError, match="DATASETS.CLASS_NAMES: class names must be distinct"):
        register_cell_datasets_from_config(cfg, prefix="mismatch")


def test_real_dsb2018_subset_registers_as_one_class(tmp_path: Path, registered: list[str]) -> None:
    source = SHARED_DATA / "dsb2018_subset"
    if not source.is_dir():
        print(f"skipped: real data not available, {source} does not exist")
        pytest.skip(f"real data not available: {source} does not exist")
    root = Path(shutil.copytree(source, tmp_path / "dsb", ignore=shutil.ignore_patterns("test_gt")))
    cfg = instant_cfg("dsb", tmp_path)
    cfg.merge_from_list(["DATASETS.CELLS_ROOT", str(root)])
    cfg.merge_from_list(["DATASETS.CLASS_NAMES", ["nucleus"], "MODEL.ROI_HEADS.NUM_CLASSES", 1])
    registered += register_cell_datasets_from_config(cfg, prefix="dsb")
    dicts = DatasetCatalog.get("dsb_trainval")
    assert len(dicts) == 20
    assert {a["category_id"] for d in dicts for a in d["annotations"]} == {0}
    assert MetadataCatalog.get("dsb_trainval").thing_classes == ["nucleus"]
    assert len(DatasetCatalog.get("dsb_test")) == 65
