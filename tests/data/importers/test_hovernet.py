"""HoVer-Net .mat import (CoNSeP inst_type and Lizard id/class forms)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from cellseg_d2.data.importers import ImportOptions, import_dataset
from cellseg_d2.errors import CellDataError
from tests.importer_helpers import dataset_info, no_leftovers, prepare, read_cells

H, W = 40, 56


def _inst_map(seed: int) -> np.ndarray:
    """Instances 1..6 as blocks of random size (CoNSeP ids are 1..N)."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((H, W), np.int32)
    for n in range(6):
        top, left = 2 + (n // 3) * 19, 2 + (n % 3) * 18
        inst[top : top + 10 + rng.integers(0, 6), left : left + 10 + rng.integers(0, 6)] = n + 1
    return inst


def _build(root: Path) -> tuple[Path, dict[str, tuple[np.ndarray, dict[int, int]]]]:
    """CoNSeP-like ``Images/`` + ``Labels/``: one CoNSeP-form and one Lizard-form .mat."""
    (root / "Images").mkdir(parents=True)
    (root / "Labels").mkdir()
    expected = {}
    types = [1, 2, 3, 1, 0, 2]  # type 0: background / unlabelled
    for k, name in enumerate(["consep_1", "lizard_1"]):
        rgb = np.random.default_rng(k).integers(0, 255, (H, W, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "Images" / f"{name}.png")
        inst = _inst_map(k)
        if k == 0:
            data = {"inst_map": inst.astype(np.float64), "inst_type": np.array(types)[:, None]}
            table = {i + 1: t for i, t in enumerate(types)}
        else:
            ids = np.array([6, 1, 2, 3, 4, 5])[:, None]
            classes = np.array([3, 3, 2, 1, 2, 1])[:, None]
            data = {"inst_map": inst, "id": ids, "class": classes, "bbox": np.zeros((6, 4))}
            table = dict(zip(ids.ravel().tolist(), classes.ravel().tolist()))
        scipy.io.savemat(root / "Labels" / f"{name}.mat", data)
        expected[name] = (inst, table)
    return root, expected


def test_hovernet_round_trip(tmp_path: Path) -> None:
    source, expected = _build(tmp_path / "Train")
    root = tmp_path / "out"
    names = ("tumour", "immune", "stroma")
    options = ImportOptions(class_names=names, skip_unclassified=True)
    summary = import_dataset("hovernet", source, root, options)
    assert summary.skipped == {"no class": 1}  # the type-0 instance
    assert summary.cells == {"tumour": 4, "immune": 4, "stroma": 3}
    for name, (inst, table) in expected.items():
        found = read_cells(root / "train" / name)
        kept = {i: t for i, t in table.items() if t}
        assert len(found) == len(kept)
        for category, mask in found:
            (cell,) = np.unique(inst[mask])
            assert np.array_equal(mask, inst == cell)  # exact pixels, id kept
            assert category == table[int(cell)] - 1
    assert dataset_info(root)["class_names"] == list(names)
    assert prepare(root) == {"tumour": 4, "immune": 4, "stroma": 3}


def test_hovernet_without_names_and_errors(tmp_path: Path) -> None:
    source, _ = _build(tmp_path / "Train")
    with pytest.raises(CellDataError, match=r"consep_1.mat: instance id 5: object without"):
        import_dataset("hovernet", source, tmp_path / "out")
    summary = import_dataset(
        "hovernet", source, tmp_path / "out", ImportOptions(unclassified="unlabelled")
    )
    assert list(summary.cells) == ["type1", "type2", "type3", "unlabelled"]
    with pytest.raises(CellDataError, match=r"instance id 3: type 3, but the class names list"):
        import_dataset("hovernet", source, tmp_path / "o2", ImportOptions(class_names=("a", "b")))
    lizard = source / "Labels" / "lizard_1.mat"
    data = scipy.io.loadmat(lizard)
    data["id"] = np.array([1, 1, 2, 3, 4, 5, 6])[:, None]
    data["class"] = np.array([1, 2, 2, 1, 2, 1, 1])[:, None]
    scipy.io.savemat(lizard, {k: data[k] for k in ("inst_map", "id", "class")})
    with pytest.raises(CellDataError, match=r"lizard_1.mat: id 1 appears in two classes"):
        import_dataset("hovernet", source, tmp_path / "o3", ImportOptions(unclassified="u"))
    scipy.io.savemat(lizard, {"inst_map": np.zeros((H, W + 1)), "inst_type": np.ones((1, 1))})
    with pytest.raises(CellDataError, match=r"lizard_1.mat: inst_map is 40x57 px but .* 40x56"):
        import_dataset("hovernet", source, tmp_path / "o4", ImportOptions(unclassified="u"))
    assert not (tmp_path / "o4").exists() and no_leftovers(tmp_path / "o4")
