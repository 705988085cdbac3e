"""Prediction runs (cellseg_d2.inference.predict): the predict tool and its input checks."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.data import decode_rle
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.submission_check import validate_submission
from cellseg_d2.evaluation.submission_read import read_submission
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.shards import skipped_list_path, work_dir_for
from tests.conftest import INSTANT_CONFIG, REPO_ROOT, load_tool

PREDICT = [sys.executable, str(REPO_ROOT / "tools" / "predict.py")]


def _run_predict(synthetic_root: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        *PREDICT,
        "--config-file", str(INSTANT_CONFIG),
        "--input", str(synthetic_root / "test_release"),
        "--id-map", str(synthetic_root / "test_image_name_to_ids.json"),
        "--output", str(output),
        "--no-progress",
        *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_predict_tool_writes_valid_zip(synthetic_root: Path, tmp_path: Path) -> None:
    from cellseg_d2.data.id_map import load_id_map

    output = tmp_path / "submission.zip"
    proc = _run_predict(
        synthetic_root, output, "--zip", "--score-thresh", "0.0", "MODEL.DEVICE", "cpu"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(output) as archive:
        assert archive.namelist() == ["test-results.json"]
    results = read_submission(output)
    assert results, "score threshold 0 keeps the random model's detections"
    report = validate_submission(
        results, load_id_map(synthetic_root / "test_image_name_to_ids.json")
    )
    assert report.violations == []
    assert not [p for p in tmp_path.iterdir() if p.name != "submission.zip"]


def test_predict_tool_tta(synthetic_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "tta.json"
    from cellseg_d2.data.id_map import load_id_map

    opts = ["--score-thresh", "0.0", "TEST.AUG.MIN_SIZES", "(96, 128)"]
    proc = _run_predict(synthetic_root, output, "--tta", *opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results, "score threshold 0 keeps the random model's detections"
    report = validate_submission(
        results, load_id_map(synthetic_root / "test_image_name_to_ids.json")
    )
    assert report.violations == []


def test_predict_tool_checks_num_classes_against_class_names(
    synthetic_root: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.json"
    proc = _run_predict(synthetic_root, output, "DATASETS.CLASS_NAMES", '["nucleus"]')
    assert proc.returncode == 2
    assert "MODEL.ROI_HEADS.NUM_CLASSES" in proc.stderr and "DATASETS.CLASS_NAMES" in proc.stderr
    assert "Traceback" not in proc.stderr and not output.exists()


@pytest.mark.parametrize("problem", ["unlisted", "missing", "size"])
def test_predict_tool_rejects_id_map_mismatch(
    synthetic_root: Path, tmp_path: Path, problem
) -> None:
    import shutil

    images = tmp_path / "images"
    shutil.copytree(synthetic_root / "test_release", images)
    entries = json.loads((synthetic_root / "test_image_name_to_ids.json").read_text())
    if problem == "unlisted":
        shutil.copy(images / entries[0]["file_name"], images / "extra.tif")
    elif problem == "missing":
        (images / entries[0]["file_name"]).unlink()
    else:
        entries[0]["height"] += 1
    id_map = tmp_path / "ids.json"
    id_map.write_text(json.dumps(entries))
    output = tmp_path / "out.json"
    cmd = [*PREDICT, "--config-file", str(INSTANT_CONFIG), "--input", str(images)]
    cmd += ["--id-map", str(id_map), "--output", str(output)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    named = "extra.tif" if problem == "unlisted" else entries[0]["file_name"]
    assert named in proc.stderr
    assert not output.exists()


PREDICT_TOOL = REPO_ROOT / "tools" / "predict.py"


def _predict_in_process(images: Path, id_map: Path, *flags: str) -> int:
    """Run tools/predict.py's main in this process (fast) on the instant-test config."""
    tool = load_tool(PREDICT_TOOL)
    argv = ["--config-file", str(INSTANT_CONFIG), "--input", str(images)]
    argv += ["--id-map", str(id_map), "--no-progress", *flags, "MODEL.DEVICE", "cpu"]
    return tool.main(tool.parse_args(argv))


def _truncate(path: Path) -> None:
    """Cut a TIFF after its header: the size check passes, decoding fails mid-run."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture()
def folder_with_bad_image(synthetic_root: Path, tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """A copy of the 3 test images (LZW TIFFs, id-map order) whose middle one is truncated."""
    import shutil

    from cellseg_d2.data.id_map import load_id_map

    images = tmp_path / "images"
    shutil.copytree(synthetic_root / "test_release", images)
    id_map = synthetic_root / "test_image_name_to_ids.json"
    entries = load_id_map(id_map)
    assert len(entries) == 3
    _truncate(images / entries[1]["file_name"])
    return images, id_map, entries


def test_predict_strict_stops_on_truncated_image_then_resumes(
    synthetic_root: Path, folder_with_bad_image, tmp_path: Path, capsys
) -> None:
    import shutil

    images, id_map, entries = folder_with_bad_image
    output = tmp_path / "out" / "submission.zip"
    flags = ["--output", str(output), "--zip", "--score-thresh", "0.0"]
    assert _predict_in_process(images, id_map, *flags) == 2
    stderr = capsys.readouterr().err
    assert entries[1]["file_name"] in stderr and "--resume" in stderr
    assert not output.exists()
    work = work_dir_for(output)
    first = work / f"{entries[0]['id']}.json"
    assert json.loads(first.read_text()), "the image before the bad one is kept"
    assert not (work / f"{entries[1]['id']}.json").exists()

    # a second run without --resume must not throw the shards away
    assert _predict_in_process(images, id_map, *flags) == 2
    assert str(work) in capsys.readouterr().err and first.exists()
    # resuming with other thresholds would mix two runs: refused, naming what differs
    changed = [*flags[:-1], "0.5", "--resume"]
    assert _predict_in_process(images, id_map, *changed) == 2
    assert "score_thresh" in capsys.readouterr().err and first.exists()

    # mark the finished image's shard, fix the file, resume: only the missing images run
    first.write_text("[]")
    shutil.copy(synthetic_root / "test_release" / entries[1]["file_name"], images)
    assert _predict_in_process(images, id_map, *flags, "--resume") == 0
    results = read_submission(output)
    ids = {r["image_id"] for r in results}
    assert entries[0]["id"] not in ids, "a finished image was predicted again"
    assert {entries[1]["id"], entries[2]["id"]} <= ids
    assert validate_submission(results, entries).violations == []
    assert not work.exists() and sorted(p.name for p in output.parent.iterdir()) == [output.name]


def test_predict_skip_bad_lists_and_continues(
    folder_with_bad_image, tmp_path: Path, capsys
) -> None:
    images, id_map, entries = folder_with_bad_image
    output = tmp_path / "submission.json"
    flags = ["--output", str(output), "--score-thresh", "0.0", "--skip-bad"]
    assert _predict_in_process(images, id_map, *flags) == 0
    assert entries[1]["file_name"] in capsys.readouterr().err
    listed = skipped_list_path(output).read_text()
    assert listed.startswith(entries[1]["file_name"] + "\t") and "unreadable" in listed
    ids = {r["image_id"] for r in json.loads(output.read_text())}
    assert ids == {entries[0]["id"], entries[2]["id"]}
    assert work_dir_for(output).is_dir(), "kept so that --resume adds the skipped image later"


def test_predict_formats_agree_with_submission(synthetic_root: Path, tmp_path: Path) -> None:
    import csv

    from cellseg_d2.data.id_map import load_id_map
    from cellseg_d2.data.io import read_tiff
    from cellseg_d2.inference.export import export_paths

    id_map = synthetic_root / "test_image_name_to_ids.json"
    entries = load_id_map(id_map)
    output, export = tmp_path / "sub.json", tmp_path / "export"
    flags = ["--output", str(output), "--output-dir", str(export), "--score-thresh", "0.0"]
    flags += ["--format", "coco,labels", "--format", "geojson,csv"]
    assert _predict_in_process(synthetic_root / "test_release", id_map, *flags) == 0
    results = json.loads(output.read_text())
    rows = list(csv.DictReader((export / "cells.csv").open()))
    kept = 0
    for entry in entries:
        paths = export_paths(export, entry["file_name"])
        instances = read_tiff(paths["instances"])
        classes = read_tiff(paths["classes"])
        mine = sorted(
            (r for r in results if r["image_id"] == entry["id"]), key=lambda r: -r["score"]
        )
        expected = np.zeros(instances.shape, np.int64)
        expected_classes = np.zeros(instances.shape, np.int64)
        for result in mine:  # the RLE results painted by descending score: higher score wins
            free = decode_rle(result["segmentation"]) & (expected == 0)
            if free.any():
                expected[free] = expected.max() + 1
                expected_classes[free] = result["category_id"]
        assert np.array_equal(instances, expected)
        assert np.array_equal(classes, expected_classes)
        kept += int(instances.max())
        # the GeoJSON holds the label image's cells, with its ids
        features = json.loads(paths["geojson"].read_text())["features"]
        assert [f["id"] for f in features] == list(range(1, int(instances.max()) + 1))
        mine_rows = [r for r in rows if r["image_id"] == str(entry["id"])]
        assert [int(r["cell_id"]) for r in mine_rows] == [f["id"] for f in features]
    assert len(rows) == kept > 0
    assert not work_dir_for(output).exists()


def test_predict_tool_rejects_formats_without_destination(synthetic_root: Path) -> None:
    tool = load_tool(PREDICT_TOOL)
    base = ["--config-file", "c.yaml", "--input", "i", "--id-map", "m.json"]
    with pytest.raises(SystemExit) as exit_info:
        tool.parse_args([*base, "--format", "labels"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        tool.parse_args([*base, "--output", "x.json", "--format", "csv"])
    with pytest.raises(SystemExit):
        tool.parse_args([*base, "--output", "x.json", "--format", "coco,tiff"])
    args = tool.parse_args([*base, "--output", "x.json", "--format", "coco", "MODEL.DEVICE", "cpu"])
    assert args.format == ["coco"] and args.opts == ["MODEL.DEVICE", "cpu"]


class _InterruptedPredictor:
    """Detects one square per image, then raises KeyboardInterrupt (a Ctrl-C) on a later call."""

    batch_size = 1

    def __init__(self, calls_before_interrupt: int) -> None:
        self.calls_left = calls_before_interrupt

    def __call__(self, images: list[np.ndarray]) -> list[list[Detection]]:
        if self.calls_left == 0:
            raise KeyboardInterrupt
        self.calls_left -= 1
        return [[Detection(0, 0.9, 2, 3, np.ones((5, 6), bool))] for _ in images]

    def warn_detection_cap(self, num_images: int) -> None:
        """One detection per image never reaches a cap."""


def test_interrupted_run_keeps_shards_and_resumes(synthetic_root: Path, tmp_path: Path) -> None:
    from cellseg_d2.data.id_map import load_id_map
    from cellseg_d2.inference.predict import predict_to_files

    entries = load_id_map(synthetic_root / "test_image_name_to_ids.json")
    output, export = tmp_path / "sub.json", tmp_path / "export"
    kwargs = dict(
        formats=["coco", "csv"],
        fingerprint={"run": "a"},
        class_names=["a", "b", "c", "d"],
        output=output,
        output_dir=export,
        progress=False,
    )
    images = synthetic_root / "test_release"
    with pytest.raises(KeyboardInterrupt):
        predict_to_files(_InterruptedPredictor(2), images, entries, **kwargs)
    work = work_dir_for(output)
    assert sorted(p.name for p in work.glob("*.json") if p.name[0].isdigit()) == sorted(
        f"{e['id']}.json" for e in entries[:2]
    )
    assert not output.exists() and not (export / "cells.csv").exists()
    with pytest.raises(CellDataError, match="another run"):
        predict_to_files(
            _InterruptedPredictor(5), images, entries, resume=True, **{**kwargs, "fingerprint": {}}
        )
    summary = predict_to_files(_InterruptedPredictor(1), images, entries, resume=True, **kwargs)
    assert (summary.resumed, summary.predicted) == (2, 1)
    results = json.loads(output.read_text())
    assert [r["image_id"] for r in results] == [e["id"] for e in entries]
    assert len((export / "cells.csv").read_text().splitlines()) == 1 + len(entries)
    assert not work.exists()


def test_predict_refuses_huge_id_map_before_reading_it(
    synthetic_root: Path, tmp_path: Path, capsys
) -> None:
    from cellseg_d2.inference.predict import MAX_ID_MAP_BYTES

    id_map = tmp_path / "ids.json"
    with open(id_map, "wb") as handle:  # sparse: 2 GiB long, nothing stored or read
        handle.truncate(2 << 30)
    output = tmp_path / "sub.json"
    output.write_text("earlier")
    flags = ["--output", str(output)]
    assert _predict_in_process(synthetic_root / "test_release", id_map, *flags) == 2
    err = capsys.readouterr().err
    assert f"{id_map}: the id map has 2,147,483,648 bytes, more than the " in err
    assert f"{MAX_ID_MAP_BYTES:,}" in err and "Traceback" not in err
    assert output.read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.json", "sub.json"]


class _OverlappingPredictor:
    """Three squares per image: two that overlap and a third hidden by the first."""

    batch_size = 2

    def __call__(self, images: list[np.ndarray]) -> list[list[Detection]]:
        square = np.ones((6, 6), bool)
        cells = [(0.9, 2, 2), (0.8, 5, 5), (0.1, 2, 2)]
        return [[Detection(0, s, y, x, square) for s, y, x in cells] for _ in images]

    def warn_detection_cap(self, num_images: int) -> None:
        """Three detections never reach a cap."""


def test_keep_overlaps_writes_every_detection_and_cannot_be_resumed_mixed(
    synthetic_root: Path, tmp_path: Path
) -> None:
    import csv

    from cellseg_d2.data.id_map import load_id_map
    from cellseg_d2.inference.export import CELLS_ALL_DETECTIONS, CELLS_LABEL_IMAGE
    from cellseg_d2.inference.predict import predict_to_files

    entries = load_id_map(synthetic_root / "test_image_name_to_ids.json")
    images = synthetic_root / "test_release"
    kwargs = dict(formats=["geojson", "csv"], class_names=["a"], progress=False)

    def stamp(keep: bool) -> dict[str, str]:
        return {"run": "a", "keep_overlaps": str(keep)}  # as prediction_fingerprint has it

    counts = {}
    for keep in (False, True):
        export = tmp_path / f"keep{keep}"
        summary = predict_to_files(
            _OverlappingPredictor(), images, entries, fingerprint=stamp(keep),
            output_dir=export, keep_overlaps=keep, **kwargs,
        )  # fmt: skip
        assert summary.predicted == len(entries)
        rows = list(csv.DictReader((export / "cells.csv").open()))
        note = CELLS_ALL_DETECTIONS if keep else CELLS_LABEL_IMAGE
        assert {row["cells"] for row in rows} == {note}
        for entry in entries:
            stem = Path(entry["file_name"]).stem
            collection = json.loads((export / "geojson" / f"{stem}.geojson").read_text())
            assert collection["properties"] == {"cells": note}
            counts[keep] = len(collection["features"])
        assert len(rows) == counts[keep] * len(entries)
    assert counts == {False: 2, True: 3}

    # the fingerprint records the mode: a resume in the other mode is refused
    export = tmp_path / "mixed"
    with pytest.raises(KeyboardInterrupt):
        predict_to_files(
            _InterruptedPredictor(1), images, entries, fingerprint=stamp(True),
            output_dir=export, keep_overlaps=True, **kwargs,
        )  # fmt: skip
    with pytest.raises(CellDataError, match="another keep_overlaps"):
        predict_to_files(
            _OverlappingPredictor(), images, entries, fingerprint=stamp(False),
            output_dir=export, resume=True, **kwargs,
        )  # fmt: skip
    with pytest.raises(ValueError, match="keep_overlaps differs"):
        predict_to_files(
            _OverlappingPredictor(), images, entries, fingerprint=stamp(True),
            output_dir=export, resume=True, **kwargs,
        )  # fmt: skip
    summary = predict_to_files(
        _OverlappingPredictor(), images, entries, fingerprint=stamp(True),
        output_dir=export, resume=True, keep_overlaps=True, **kwargs,
    )  # fmt: skip
    assert (summary.resumed, summary.predicted) == (1, len(entries) - 1)


def test_predicted_geojson_imports_back_to_the_label_export(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Export -> import -> the same cells: predict with labels and geojson, import the GeoJSON
    folder with the qupath importer, and each imported cell is a cell of the label export."""
    from cellseg_d2.data.id_map import load_id_map
    from cellseg_d2.data.importers import ImportOptions, import_dataset
    from cellseg_d2.data.io import read_instance_mask, read_tiff
    from cellseg_d2.inference.export import export_paths
    from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES

    id_map = synthetic_root / "test_image_name_to_ids.json"
    export = tmp_path / "export"
    flags = ["--output-dir", str(export), "--score-thresh", "0.0", "--format", "labels,geojson"]
    assert _predict_in_process(synthetic_root / "test_release", id_map, *flags) == 0
    root = tmp_path / "imported"
    options = ImportOptions(class_names=tuple(DEFAULT_CLASS_NAMES))
    import_dataset(
        "qupath", export / "geojson", root, options, images=synthetic_root / "test_release"
    )
    compared = 0
    for entry in load_id_map(id_map):
        paths = export_paths(export, entry["file_name"])
        instances, classes = read_tiff(paths["instances"]), read_tiff(paths["classes"])
        folder = root / "train" / Path(entry["file_name"]).stem
        expected = {
            (int(classes[instances == k][0]), np.packbits(instances == k).tobytes())
            for k in range(1, int(instances.max()) + 1)
        }
        found = set()
        for mask_file in folder.glob("class*.tif"):
            labels = read_instance_mask(mask_file)
            cls = int(mask_file.stem.removeprefix("class"))
            found |= {
                (cls, np.packbits(labels == k).tobytes()) for k in set(np.unique(labels)) - {0}
            }
        assert found == expected
        compared += len(expected)
    assert compared > 0
