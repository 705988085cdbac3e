"""cellseg_d2.data.convert: the COCO-JSON cache (built, reused, rebuilt, never half-written),
and the bad input it refuses."""

from __future__ import annotations

import faulthandler
import json
import os
import runpy
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellseg_d2.data import convert
from cellseg_d2.data.convert import load_train_coco
from cellseg_d2.data.dataset_dicts import load_cell_test_dicts, load_cell_train_dicts
from cellseg_d2.data.io import read_instance_mask, write_tiff
from cellseg_d2.data.prepare import prepare_cell_dataset
from cellseg_d2.data.rle import decode_rle
from cellseg_d2.data.validate import TrainFolder, scan_dataset
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES
from tests.data.tiny_dataset import bump_mtime, labels_a, make_dataset, rgba_image

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
PREPARE_TOOL = REPO / "tools" / "prepare_dataset.py"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "cells")


# ---- RLE ------------------------------------------------------------------------------------


# ---- conversion -----------------------------------------------------------------------------


def test_cache_content(dataset: Path) -> None:
    summary = prepare_cell_dataset(dataset)
    coco = json.loads((dataset / convert.CACHE_DIR / "instances_train.json").read_text())
    assert coco["categories"] == [
        {"id": k + 1, "name": name} for k, name in enumerate(DEFAULT_CLASS_NAMES)
    ]
    assert coco["info"]["cellseg"]["class_names"] == list(DEFAULT_CLASS_NAMES)
    assert [(i["id"], i["folder"], i["file_name"]) for i in coco["images"]] == [
        (1, "a", "train/a/image.tif"),
        (2, "b", "train/b/image.tif"),
    ]
    ids = [a["id"] for a in coco["annotations"]]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids)
    assert coco["info"]["cellseg"]["min_area"] == 4
    assert coco["info"]["cellseg"]["conversion_version"] == convert.CONVERSION_VERSION
    assert summary.dropped_small == 1 and summary.train_images == 2
    assert summary.instances_per_class == {
        "epithelial": 2,
        "lymphocyte": 1,
        "neutrophil": 1,
        "macrophage": 0,
    }
    assert summary.test_images == 2 and summary.empty_images == [] and summary.warnings == []
    test = json.loads((dataset / convert.CACHE_DIR / "test_images.json").read_text())
    assert "annotations" not in test  # COCOEvaluator then only saves predictions
    assert [(i["id"], i["file_name"]) for i in test["images"]] == [
        (3, "test_release/y.tif"),
        (7, "test_release/x.tif"),
    ]


def test_cache_is_reused(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_cell_train_dicts(dataset)
    cache = dataset / convert.CACHE_DIR / "instances_train.json"
    stamp = cache.stat().st_mtime_ns

    def fail(*args: object) -> None:
        raise AssertionError("the converter ran although the cache is fresh")

    monkeypatch.setattr(convert, "_build_train_coco", fail)
    assert load_cell_train_dicts(dataset) == first
    assert cache.stat().st_mtime_ns == stamp


def test_cache_is_rebuilt_when_a_mask_changes(dataset: Path) -> None:
    assert len(load_cell_train_dicts(dataset)[1]["annotations"]) == 1
    mask_path = dataset / "train" / "b" / "class2.tif"
    labels = read_instance_mask(mask_path).astype(np.float64)
    labels[10:14, 8:12] = 41
    write_tiff(mask_path, labels)
    bump_mtime(mask_path)
    assert len(load_cell_train_dicts(dataset)[1]["annotations"]) == 2


def test_cache_is_rebuilt_for_min_area_and_version(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = lambda dicts: sum(len(d["annotations"]) for d in dicts)  # noqa: E731
    assert count(load_cell_train_dicts(dataset, min_area=4)) == 4
    assert count(load_cell_train_dicts(dataset, min_area=1)) == 5
    assert count(load_cell_train_dicts(dataset, min_area=25)) == 2  # areas 28 and 36
    calls = []
    monkeypatch.setattr(convert, "CONVERSION_VERSION", convert.CONVERSION_VERSION + 1)
    original = convert._build_train_coco
    monkeypatch.setattr(convert, "_build_train_coco", lambda *a: calls.append(1) or original(*a))
    load_cell_train_dicts(dataset, min_area=25)
    assert calls == [1]


def test_unreadable_cache_is_refused_not_overwritten(dataset: Path) -> None:
    """A file the project cannot prove it wrote is never replaced; removing it rebuilds it."""
    load_cell_train_dicts(dataset)
    cache = dataset / convert.CACHE_DIR / "instances_train.json"
    cache.write_text('{"images": [')
    with pytest.raises(CellDataError, match="not written by cellseg-d2; refusing") as info:
        load_cell_train_dicts(dataset)
    assert str(cache) in str(info.value)
    assert cache.read_text() == '{"images": ['
    cache.unlink()
    assert len(load_cell_train_dicts(dataset)) == 2
    json.loads(cache.read_text())


def test_pool_conversion_equals_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cellseg_d2.data.synthetic import generate_synthetic_dataset

    root = tmp_path / "syn"
    generate_synthetic_dataset(root, num_train=10, num_test=0, seed=3, min_size=48, max_size=64)
    pooled = load_train_coco(root)
    shutil.rmtree(root / convert.CACHE_DIR)
    monkeypatch.setattr(convert, "_POOL_MIN_IMAGES", 10**6)
    serial = load_train_coco(root)
    assert pooled["images"] == serial["images"] and pooled["annotations"] == serial["annotations"]
    assert len(serial["images"]) == 10 and len(serial["annotations"]) > 10


# ---- bad input ------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    """Cut a TIFF in half; an LZW stream of noise keeps the pixel data in the second half."""
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 4), dtype=np.uint8)
    noise[..., 3] = 255
    write_tiff(path, noise, compression="lzw")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _set_mask_value(value: float) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        labels = np.zeros((20, 24), np.float64)
        labels[3, 3] = value
        write_tiff(root / "train" / "a" / "class1.tif", labels)

    return mutate


def _edit_id_map(edit: Callable[[list[dict]], None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / "test_image_name_to_ids.json"
        entries = json.loads(path.read_text())
        edit(entries)
        path.write_text(json.dumps(entries))

    return mutate


BAD_INPUTS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "missing image": (
        lambda r: (r / "train" / "a" / "image.tif").unlink(),
        "train/a/image.tif",
        "not found",
    ),
    "truncated image": (lambda r: _truncate(r / "train" / "b" / "image.tif"), "b/image.tif", ""),
    "not a tiff": (
        lambda r: (r / "train" / "b" / "class2.tif").write_bytes(b"garbage"),
        "b/class2.tif",
        "unreadable",
    ),
    "mask shape": (
        lambda r: write_tiff(r / "train" / "a" / "class3.tif", np.zeros((20, 23))),
        "a/class3.tif",
        "20x23",
    ),
    "class5": (
        lambda r: write_tiff(r / "train" / "a" / "class5.tif", np.zeros((20, 24))),
        "a/class5.tif",
        "DATASETS.CLASS_NAMES",
    ),
    "mask.tif": (
        lambda r: write_tiff(r / "train" / "b" / "mask.tif", np.zeros((18, 16))),
        "b/mask.tif",
        "unexpected TIFF name",
    ),
    "nan": (_set_mask_value(np.nan), "a/class1.tif", "NaN"),
    "inf": (_set_mask_value(np.inf), "a/class1.tif", "infinite"),
    "negative": (_set_mask_value(-3.0), "a/class1.tif", "negative"),
    "non-integer": (_set_mask_value(1.5), "a/class1.tif", "non-integer"),
    "tiny image": (
        lambda r: write_tiff(r / "train" / "c" / "image.tif", rgba_image(8, 40)),
        "c/image.tif",
        "minimum side",
    ),
    "id map misses a file": (
        lambda r: write_tiff(r / "test_release" / "z.tif", rgba_image(20, 20)),
        "test_release/z.tif",
        "missing from the id map",
    ),
    "id map names a missing file": (
        lambda r: (r / "test_release" / "x.tif").unlink(),
        "test_image_name_to_ids.json",
        "x.tif",
    ),
    "id map repeats an id": (
        _edit_id_map(lambda e: e[1].update(id=7)),
        "test_image_name_to_ids.json",
        "id 7 is used twice",
    ),
    "id map repeats a file": (
        _edit_id_map(lambda e: e.append({**e[0], "id": 99})),
        "test_image_name_to_ids.json",
        "x.tif is listed twice",
    ),
    "id map size": (
        _edit_id_map(lambda e: e[0].update(height=18)),
        "test_release/x.tif",
        "says 18x19",
    ),
    "id map entry": (
        _edit_id_map(lambda e: e[0].pop("id")),
        "test_image_name_to_ids.json",
        "entry 0",
    ),
    "id map json": (
        lambda r: (r / "test_image_name_to_ids.json").write_text("[{"),
        "test_image_name_to_ids.json",
        "unreadable",
    ),
    "no id map": (
        lambda r: (r / "test_image_name_to_ids.json").unlink(),
        "test_image_name_to_ids.json",
        "not found",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_naming_the_file(dataset: Path, case: str) -> None:
    mutate, file_part, problem = BAD_INPUTS[case]
    mutate(dataset)
    with pytest.raises(CellDataError) as info:
        prepare_cell_dataset(dataset)
    message = str(info.value)
    assert file_part in message and problem in message, message


def test_error_leaves_no_half_written_cache(dataset: Path) -> None:
    annotations = dataset / convert.CACHE_DIR
    _set_mask_value(np.nan)(dataset)
    with pytest.raises(CellDataError):
        load_cell_train_dicts(dataset)
    assert not annotations.exists() or list(annotations.iterdir()) == []
    write_tiff(dataset / "train" / "a" / "class1.tif", labels_a()[1])
    load_cell_train_dicts(dataset)
    before = (annotations / "instances_train.json").read_bytes()
    _truncate(dataset / "train" / "b" / "image.tif")
    with pytest.raises(CellDataError):
        load_cell_train_dicts(dataset)
    assert (annotations / "instances_train.json").read_bytes() == before
    assert sorted(p.name for p in annotations.iterdir()) == ["instances_train.json"]


def test_scan_without_test_release_warns_about_the_id_map(dataset: Path) -> None:
    shutil.rmtree(dataset / "test_release")
    files = scan_dataset(dataset)
    assert files.test_images is None and len(files.warnings) == 1
    assert prepare_cell_dataset(dataset).test_images is None


# ---- the prepare_dataset tool ---------------------------------------------------------------


def _prepare_main() -> Callable[[list[str]], int]:
    return runpy.run_path(str(PREPARE_TOOL))["main"]


# ---- real data ------------------------------------------------------------------------------


def _real(name: str, tmp_path: Path) -> Path:
    """Copy a shared real dataset into tmp_path (the converter writes its cache into the root)."""
    source = SHARED_DATA / name
    if not source.is_dir():
        pytest.skip(f"real data not available: {source} does not exist")
    return Path(shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("test_gt")))


def test_real_hw3_sample(tmp_path: Path) -> None:
    root = _real("hw3_sample", tmp_path)
    summary = prepare_cell_dataset(root)
    assert summary.train_images == 1 and summary.test_images is None
    assert list(summary.instances_per_class.values()) == [2, 159, 0, 0]
    (sample,) = load_cell_train_dicts(root)
    assert (sample["height"], sample["width"]) == (397, 482)
    folder = root / "train" / "sample-image"
    for category_id, mask_name in ((0, "class1.tif"), (1, "class2.tif")):
        labels = read_instance_mask(folder / mask_name)
        decoded = [
            decode_rle(a["segmentation"])
            for a in sample["annotations"]
            if a["category_id"] == category_id
        ]
        rebuilt = np.zeros_like(labels)
        for mask in decoded:
            (value,) = np.unique(labels[mask])
            assert (mask == (labels == value)).all()
            rebuilt[mask] = value
        assert (rebuilt == labels).all()


def test_real_dsb2018_subset(tmp_path: Path) -> None:
    root = _real("dsb2018_subset", tmp_path)
    summary = prepare_cell_dataset(root, class_names=["nucleus"])
    assert summary.train_images == 20 and summary.test_images == 65
    assert summary.instances_per_class == {"nucleus": 953}
    test_ids = [d["image_id"] for d in load_cell_test_dicts(root, class_names=["nucleus"])]
    id_map = json.loads((root / "test_image_name_to_ids.json").read_text())
    assert sorted(test_ids) == sorted(e["id"] for e in id_map)


# ---- hostile or careless data (issue 12): exit 2, the file named, the earlier cache kept ---------


def _fails_keeping_cache(dataset: Path, capsys: pytest.CaptureFixture, *needles: str) -> str:
    """Run prepare_dataset on a dataset whose cache was built before: exit 2, the message holds
    every needle, no traceback, and the earlier cache is byte-identical."""
    cache = dataset / convert.CACHE_DIR / "instances_train.json"
    before = cache.read_bytes()
    assert _prepare_main()(["--root", str(dataset)]) == 2
    err = capsys.readouterr().err
    assert all(needle in err for needle in needles), err
    assert "Traceback" not in err
    assert cache.read_bytes() == before
    return err


@pytest.fixture
def prepared(dataset: Path, capsys: pytest.CaptureFixture) -> Path:
    """The tiny dataset with its cache built by the tool."""
    assert _prepare_main()(["--root", str(dataset)]) == 0
    capsys.readouterr()
    return dataset


def test_multi_page_image_exits_2_naming_file_and_pages(
    prepared: Path, capsys: pytest.CaptureFixture
) -> None:
    path = prepared / "train" / "a" / "image.tif"
    with tifffile.TiffWriter(path) as tif:
        for _ in range(5):
            tif.write(np.zeros((20, 24), np.uint8), metadata=None)
    _fails_keeping_cache(prepared, capsys, "a/image.tif", "multi-page TIFF with 5 pages")


def test_uint64_mask_and_non_utf8_folder(prepared: Path, capsys: pytest.CaptureFixture) -> None:
    labels = np.zeros((18, 16), np.uint64)
    labels[:, 0:2] = 2**64 - 1
    labels[5:9, 6:10] = 2**63
    write_tiff(prepared / "train" / "b" / "class2.tif", labels)
    bump_mtime(prepared / "train" / "b" / "class2.tif")
    assert _prepare_main()(["--root", str(prepared)]) == 0
    assert "lymphocyte:" in capsys.readouterr().out
    (b_annotations,) = [d for d in load_cell_train_dicts(prepared) if d["folder"] == "b"]
    assert sorted(a["area"] for a in b_annotations["annotations"]) == [16, 36]
    os.mkdir(os.fsencode(prepared / "train") + b"/bad\xff")
    _fails_keeping_cache(prepared, capsys, "bad\\udcff", "not valid UTF-8")


def test_pixel_cap_exits_2_naming_file_limit_and_override(
    prepared: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bump_mtime(prepared / "train" / "a" / "image.tif")  # forces a rebuild that reads pixels
    monkeypatch.setenv("CELLSEG_MAX_IMAGE_PIXELS", "100")
    _fails_keeping_cache(
        prepared, capsys, "a/image.tif", "limit of 100 pixels", "CELLSEG_MAX_IMAGE_PIXELS"
    )


def test_cache_never_overwrites_a_user_file(prepared: Path, capsys: pytest.CaptureFixture) -> None:
    user = prepared / "annotations" / "instances_train.json"
    user.parent.mkdir()
    user.write_text('{"mine": true}')
    bump_mtime(prepared / "train" / "a" / "class1.tif")
    assert _prepare_main()(["--root", str(prepared)]) == 0
    assert user.read_text() == '{"mine": true}'
    capsys.readouterr()
    foreign = prepared / convert.CACHE_DIR / "test_images.json"
    foreign.write_text('{"also": "mine"}')
    (prepared / "test_release" / "x.tif").touch()  # the test list must be rebuilt
    bump_mtime(prepared / "test_release" / "x.tif")
    _fails_keeping_cache(prepared, capsys, str(foreign), "refusing to overwrite")
    assert foreign.read_text() == '{"also": "mine"}'


def test_all_empty_training_data_exits_2_naming_the_root(
    prepared: Path, capsys: pytest.CaptureFixture
) -> None:
    for mask in (prepared / "train").glob("*/class*.tif"):
        write_tiff(mask, np.zeros(read_instance_mask(mask).shape))
        bump_mtime(mask)
    err = _fails_keeping_cache(prepared, capsys, "none of the 2 training images holds a cell")
    assert str(prepared) in err


def test_killed_conversion_worker_fails_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cellseg_d2.data.synthetic import generate_synthetic_dataset

    root = tmp_path / "syn"
    generate_synthetic_dataset(root, num_train=10, num_test=0, seed=3, min_size=48, max_size=64)
    cache = root / convert.CACHE_DIR / "instances_train.json"
    before = json.dumps(load_train_coco(root, min_area=4))
    victim = sorted(p.name for p in (root / "train").iterdir())[4]
    parent = os.getpid()
    original = convert.read_train_sample

    def killed_for_memory(folder: TrainFolder, min_size: int) -> object:
        # Runs in the forked worker (the parent is never killed): what the OOM killer does.
        if folder.name == victim and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(folder, min_size)

    monkeypatch.setattr(convert, "read_train_sample", killed_for_memory)
    # A hang would end the whole run after 120 s with a traceback dump, failing this test.
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        with pytest.raises(CellDataError) as info:
            load_train_coco(root, min_area=1)
    finally:
        faulthandler.cancel_dump_traceback_later()
    message = str(info.value)
    assert str(root) in message and "worker process died" in message
    assert "CELLSEG_CONVERT_WORKERS=1" in message
    assert json.dumps(json.loads(cache.read_text())) == before  # the earlier cache is intact
    monkeypatch.setenv("CELLSEG_CONVERT_WORKERS", "1")  # the advice works: no pool, no kill
    monkeypatch.setattr(convert, "read_train_sample", original)
    assert len(load_train_coco(root, min_area=1)["images"]) == 10
