"""Tests for the synthetic dataset writer and its command-line tool (CPU, a few seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellseg_d2.data.io import read_image, read_instance_mask
from cellseg_d2.data.synthetic import DENSE_MIN_CELLS, generate_synthetic_dataset
from cellseg_d2.utils.layout import class_file_name

REPO = Path(__file__).resolve().parents[3]
TOOL = REPO / "tools" / "make_synthetic_dataset.py"
SMALL = {"min_size": 64, "max_size": 128}
CLASS_FILES = {class_file_name(k) for k in range(4)}


def _check_image(path: Path) -> tuple[int, int]:
    """Assert the real dataset's image format; return (height, width)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.LZW
        image = page.asarray()
    assert image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 4
    assert (image[..., 3] == 255).all()
    assert image[..., :3].std() > 5  # not blank
    return image.shape[0], image.shape[1]


def _check_masks(folder: Path, shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """Assert the mask files' format and id rules; return {class: ids}."""
    names = sorted(p.name for p in folder.iterdir() if p.name != "image.tif")
    assert names, f"{folder} has no mask"
    assert set(names) <= CLASS_FILES, names
    ids: dict[int, np.ndarray] = {}
    owner = np.zeros(shape, np.int64)
    for name in names:
        with tifffile.TiffFile(folder / name) as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.NONE
            label = tif.pages[0].asarray()
        assert label.dtype == np.float64
        assert label.shape == shape
        assert (label == np.floor(label)).all() and label.min() == 0
        values, areas = np.unique(label[label > 0], return_counts=True)
        assert values.size > 0, f"{folder / name} is empty but was written"
        assert areas.min() >= 10
        assert not (owner[label > 0]).any(), "instances of two classes share pixels"
        owner[label > 0] = 1
        ids[int(name[5])] = values.astype(np.int64)
    every = np.concatenate(list(ids.values()))
    assert np.unique(every).size == every.size, "an id is used by two classes"
    assert not np.array_equal(np.sort(every), np.arange(1, every.size + 1)), "ids are contiguous"
    # Ids run across classes: every id of class K is below every id of a later class.
    ordered = [ids[k] for k in sorted(ids)]
    for lower, upper in zip(ordered[:-1], ordered[1:], strict=True):
        assert lower.max() < upper.min()
    return ids


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Three train and two test images of 64-128 px."""
    root = tmp_path_factory.mktemp("synthetic")
    summary = generate_synthetic_dataset(root, num_train=3, num_test=2, seed=7, **SMALL)
    return root, summary


def test_train_layout_and_formats(small_dataset: tuple[Path, dict]) -> None:
    root, summary = small_dataset
    folders = sorted((root / "train").iterdir())
    assert len(folders) == 3
    counted = dict.fromkeys(range(1, 5), 0)
    for folder in folders:
        assert folder.is_dir() and len(folder.name) == 36  # a uuid
        assert (folder / "image.tif").is_file()
        height, width = _check_image(folder / "image.tif")
        assert 64 <= height <= 128 and 64 <= width <= 128
        for cls, ids in _check_masks(folder, (height, width)).items():
            counted[cls] += ids.size
        # The project's readers accept the files.
        assert read_image(folder / "image.tif").shape == (height, width, 3)
        assert read_instance_mask(next(folder.glob("class*.tif"))).dtype == np.int64
    assert summary["splits"]["train"]["instances_per_class"] == counted
    assert summary["splits"]["train"]["images"] == 3


def test_test_split_matches_id_map(small_dataset: tuple[Path, dict]) -> None:
    root, _ = small_dataset
    records = json.loads((root / "test_image_name_to_ids.json").read_text())
    assert [r["id"] for r in records] == [1, 2]
    assert {r["file_name"] for r in records} == {p.name for p in (root / "test_release").iterdir()}
    assert {Path(r["file_name"]).stem for r in records} == {
        p.name for p in (root / "test_gt").iterdir()
    }
    train_names = {p.name for p in (root / "train").iterdir()}
    for record in records:
        assert set(record) == {"file_name", "id", "height", "width"}
        shape = _check_image(root / "test_release" / record["file_name"])
        assert shape == (record["height"], record["width"])
        _check_masks(root / "test_gt" / Path(record["file_name"]).stem, shape)
        assert Path(record["file_name"]).stem not in train_names


def test_every_class_appears_in_twenty_images(tmp_path: Path) -> None:
    summary = generate_synthetic_dataset(tmp_path, num_train=20, num_test=0, seed=3, **SMALL)
    present = set()
    for folder in (tmp_path / "train").iterdir():
        present |= {p.name for p in folder.glob("class*.tif")}
    assert present == CLASS_FILES
    assert all(n > 0 for n in summary["instances_per_class"].values())
    # The common classes dominate, the rare ones stay rare.
    counts = summary["instances_per_class"]
    assert min(counts[1], counts[2]) > max(counts[3], counts[4])


def test_dense_image_has_more_than_200_cells(tmp_path: Path) -> None:
    summary = generate_synthetic_dataset(tmp_path, 2, 1, seed=1, min_size=256, max_size=256)
    cells = {}
    for folder in (tmp_path / "train").iterdir():
        cells[folder.name] = sum(
            np.unique(tifffile.imread(p)).size - 1 for p in folder.glob("class*.tif")
        )
    # Image 0 of each split is dense; image 1 is a normal one.
    assert max(cells.values()) > DENSE_MIN_CELLS
    assert 20 <= min(cells.values()) <= 150
    assert summary["splits"]["test"]["max_cells_per_image"] > DENSE_MIN_CELLS
    assert summary["dense_images"] == 2


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    def snapshot(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }

    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_synthetic_dataset(tmp_path / name, 2, 2, seed=seed, **SMALL)
    first, again, other = (snapshot(tmp_path / n) for n in "abc")
    assert first == again
    assert set(first) != set(other)  # other uuids
    first_pixels = sorted(v for k, v in first.items() if k.endswith("image.tif"))
    other_pixels = sorted(v for k, v in other.items() if k.endswith("image.tif"))
    assert first_pixels != other_pixels


def test_existing_dataset_needs_overwrite(tmp_path: Path) -> None:
    generate_synthetic_dataset(tmp_path, 1, 1, seed=0, **SMALL)
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(tmp_path, 1, 1, seed=1, **SMALL)
    generate_synthetic_dataset(tmp_path, 1, 0, seed=1, overwrite=True, **SMALL)
    assert len(list((tmp_path / "train").iterdir())) == 1
    assert not any((tmp_path / "test_release").iterdir())
    assert json.loads((tmp_path / "test_image_name_to_ids.json").read_text()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": 200, "max_size": 100},
        {"min_size": 16, "max_size": 64},
        {"num_train": -1},
        {"seed": -3},
    ],
)
def test_invalid_arguments_raise(tmp_path: Path, kwargs: dict) -> None:
    arguments = {"num_train": 1, "num_test": 0, "seed": 0, **SMALL, **kwargs}
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, **arguments)
    assert not any(tmp_path.iterdir())  # nothing written


def _run_tool(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_writes_dataset(tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = _run_tool(
        "--output", str(out), "--num-train", "2", "--num-test", "1", "--seed", "4",
        "--min-size", "64", "--max-size", "96",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list((out / "train").iterdir())) == 2
    assert len(json.loads((out / "test_image_name_to_ids.json").read_text())) == 1
    assert str(out) in result.stderr  # the log says where the data are


def test_any_number_of_classes(tmp_path: Path) -> None:
    """Six classes: class1..class6 written, each present somewhere; one class: class1.tif only."""
    summary = generate_synthetic_dataset(
        tmp_path / "six", num_train=8, num_test=0, seed=1, num_classes=6, **SMALL
    )
    present = {p.name for p in (tmp_path / "six" / "train").glob("*/class*.tif")}
    assert present == {class_file_name(k) for k in range(6)}
    assert sorted(summary["instances_per_class"]) == [1, 2, 3, 4, 5, 6]
    one = generate_synthetic_dataset(tmp_path / "one", 3, 1, seed=1, num_classes=1, **SMALL)
    assert {p.name for p in (tmp_path / "one").glob("*/*/class*.tif")} == {"class1.tif"}
    assert one["instances_per_class"][1] > 0
    with pytest.raises(ValueError, match="num_classes"):
        generate_synthetic_dataset(tmp_path / "bad", 1, 0, num_classes=17, **SMALL)


@pytest.mark.parametrize(
    "args",
    [
        ("--min-size", "300", "--max-size", "100"),
        ("--min-size", "8"),
        ("--num-train", "-2"),
        ("--num-classes", "0"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _run_tool("--output", str(tmp_path / "data"), *args)
    assert result.returncode == 2
    assert "error" in result.stderr
    assert not (tmp_path / "data").exists()
