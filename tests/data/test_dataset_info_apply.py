"""dataset.json: apply_dataset_info (temporary file, folded into test_dataset_info.py at merge)."""

from __future__ import annotations

from pathlib import Path

import pytest

# ---- apply_dataset_info: the training config reads class names and pixel size from the data ----


def _cfg_for(root: Path, *opts: object):
    from cellseg_d2.config import load_cellseg_config
    from tests.conftest import INSTANT_CONFIG

    return load_cellseg_config(INSTANT_CONFIG, ["DATASETS.CELLS_ROOT", str(root), *opts])


def test_config_takes_class_names_count_and_pixel_size_from_dataset_json(tmp_path: Path) -> None:
    from cellseg_d2.data.dataset_info import DatasetInfo, apply_dataset_info, write_dataset_info

    write_dataset_info(tmp_path, DatasetInfo(("tumour", "stroma"), pixel_size_um=0.25))
    loaded = _cfg_for(tmp_path)
    filled = apply_dataset_info(loaded, {"MODEL.ROI_HEADS.NUM_CLASSES"})  # base sets the count
    assert list(filled.DATASETS.CLASS_NAMES) == ["tumour", "stroma"]
    assert filled.MODEL.ROI_HEADS.NUM_CLASSES == 2 and filled.INPUT.PIXEL_SIZE == 0.25
    assert loaded.MODEL.ROI_HEADS.NUM_CLASSES == 4  # the input is left alone


def test_chosen_class_names_win_when_equal_and_stop_when_different(tmp_path: Path) -> None:
    from cellseg_d2.data.dataset_info import DatasetInfo, apply_dataset_info, write_dataset_info
    from cellseg_d2.errors import CellDataError

    write_dataset_info(tmp_path, DatasetInfo(("tumour", "stroma")))
    same = _cfg_for(tmp_path, "DATASETS.CLASS_NAMES", ["tumour", "stroma"])
    assert apply_dataset_info(same, {"cli:DATASETS.CLASS_NAMES"}) is same
    other = _cfg_for(tmp_path, "DATASETS.CLASS_NAMES", ["a", "b"])
    with pytest.raises(CellDataError, match=r"DATASETS.CLASS_NAMES \['a', 'b'\].*dataset.json"):
        apply_dataset_info(other, {"cli:DATASETS.CLASS_NAMES"})
    in_file = _cfg_for(tmp_path)  # the four default names, chosen by a config file
    with pytest.raises(CellDataError, match="differs from class_names"):
        apply_dataset_info(in_file, {"DATASETS.CLASS_NAMES"})


def test_command_line_class_count_is_kept_and_then_checked(tmp_path: Path) -> None:
    from cellseg_d2.data.dataset_info import DatasetInfo, apply_dataset_info, write_dataset_info
    from cellseg_d2.data.register import check_num_classes
    from cellseg_d2.errors import CellDataError

    write_dataset_info(tmp_path, DatasetInfo(("tumour", "stroma")))
    loaded = _cfg_for(tmp_path, "MODEL.ROI_HEADS.NUM_CLASSES", 3)
    filled = apply_dataset_info(loaded, {"cli:MODEL.ROI_HEADS.NUM_CLASSES"})
    assert filled.MODEL.ROI_HEADS.NUM_CLASSES == 3
    with pytest.raises(CellDataError, match="NUM_CLASSES is 3"):
        check_num_classes(filled)


def test_no_dataset_json_changes_nothing(tmp_path: Path) -> None:
    from cellseg_d2.data.dataset_info import apply_dataset_info

    loaded = _cfg_for(tmp_path)
    assert apply_dataset_info(loaded, set()) is loaded


def test_train_tool_reads_the_class_names_of_an_imported_dataset(tmp_path: Path) -> None:
    """The whole path: a 2-class dataset with dataset.json trains with the instant config that
    names no classes; the saved config holds the dataset's names and class count."""
    import yaml

    from cellseg_d2.data.dataset_info import DatasetInfo, write_dataset_info
    from cellseg_d2.data.synthetic import generate_synthetic_dataset
    from tests.conftest import INSTANT_CONFIG, REPO_ROOT, load_tool

    root = tmp_path / "data"
    generate_synthetic_dataset(root, 6, 0, seed=0, min_size=96, max_size=128, num_classes=2)
    write_dataset_info(root, DatasetInfo(("tumour", "stroma")))
    train_net = load_tool(REPO_ROOT / "tools" / "train_net.py")
    output = tmp_path / "run"
    args = train_net.parse_args(
        ["--config-file", str(INSTANT_CONFIG), "DATASETS.CELLS_ROOT", str(root),
         "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(output), "SOLVER.MAX_ITER", "1"]
    )  # fmt: skip
    cfg = train_net.setup(args)
    assert list(cfg.DATASETS.CLASS_NAMES) == ["tumour", "stroma"]
    saved = yaml.safe_load((output / "config.yaml").read_text())
    assert saved["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 2
    assert saved["DATASETS"]["CLASS_NAMES"] == ["tumour", "stroma"]
