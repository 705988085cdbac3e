"""A run's destinations: checked before work, owned while it runs, cleaned of stale temps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.data.id_map import load_id_map
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.outputs import (
    check_export_names,
    check_output_paths,
    remove_stale_temps,
    staging_path,
)
from cellseg_d2.inference.predict import predict_to_files
from cellseg_d2.inference.shards import work_dir_for
from tests.conftest import INSTANT_CONFIG, REPO_ROOT, load_tool

PREDICT_TOOL = REPO_ROOT / "tools" / "predict.py"


def test_check_output_paths(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    check_output_paths(tmp_path / "new" / "sub.json", tmp_path / "new" / "export")
    with pytest.raises(CellDataError, match=r"folder: is a folder; --output names"):
        check_output_paths(tmp_path / "folder", None)
    with pytest.raises(CellDataError, match=r"file: is a file; --output-dir names a folder"):
        check_output_paths(None, tmp_path / "file")
    with pytest.raises(CellDataError, match=r"file is a file, not a folder"):
        check_output_paths(tmp_path / "file" / "sub.json", None)
    with pytest.raises(CellDataError, match="name the same path"):
        check_output_paths(tmp_path / "x", tmp_path / "x")


@pytest.mark.parametrize(
    ("first", "second"),
    [("cell.tif", "cell.tiff"), ("Cell.tif", "cell.tif"), ("caf\u00e9.tif", "cafe\u0301.TIF")],
)
def test_check_export_names_finds_collisions(first: str, second: str) -> None:
    entries = [{"file_name": name} for name in ("a.tif", first, "b.tif", second)]
    with pytest.raises(CellDataError, match=f"{first} and {second} would write the same"):
        check_export_names(entries)
    check_export_names([{"file_name": "cell.tif"}, {"file_name": "cell_2.tif"}])


def test_remove_stale_temps_removes_only_the_runs_temps(tmp_path: Path) -> None:
    output = tmp_path / "sub.json"
    stale = [
        tmp_path / ".sub.json.k3j_x9ab.tmp",
        staging_path(output),
        tmp_path / f".{staging_path(output).name}.abcd1234.tmp",
    ]
    kept = [tmp_path / ".other.json.abcd1234.tmp", tmp_path / "notes.txt", tmp_path / ".sub.json"]
    for path in stale + kept:
        path.write_text("x")
    assert remove_stale_temps([output, staging_path(output), tmp_path / "gone" / "x.tif"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


class _GatedPredictor:
    """One square per image; with a gate, the second call waits until the test opens it."""

    batch_size = 1

    def __init__(self, gated: bool) -> None:
        self.calls = 0
        self.waiting, self.gate = threading.Event(), threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, images: list[np.ndarray]) -> list[list[Detection]]:
        self.calls += 1
        if self.calls == 2:
            self.waiting.set()
            assert self.gate.wait(timeout=300), "the test never opened the gate"
        return [[Detection(1, 0.9, 2, 3, np.ones((5, 6), bool))] for _ in images]

    def warn_detection_cap(self, num_images: int) -> None:
        """One detection per image never reaches a cap."""


def _stream(
    synthetic_root: Path, out: Path, predictor: _GatedPredictor, formats=("coco", "csv"), **kwargs
):
    return predict_to_files(
        predictor,
        synthetic_root / "test_release",
        load_id_map(synthetic_root / "test_image_name_to_ids.json"),
        fingerprint={"run": "gated"},
        class_names=["a", "b", "c", "d"],
        output=out / "sub.json",
        output_dir=out / "export",
        formats=list(formats),
        progress=False,
        **kwargs,
    )


def test_second_run_is_refused_while_the_first_runs(synthetic_root: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    _stream(synthetic_root, reference, _GatedPredictor(gated=False))
    out = tmp_path / "run"
    first = _GatedPredictor(gated=True)
    failures: list[BaseException] = []

    def run_first() -> None:
        try:
            _stream(synthetic_root, out, first)
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert first.waiting.wait(timeout=300), failures
        work = work_dir_for(out / "sub.json")
        before = {p.name: p.read_bytes() for p in work.iterdir()}
        assert len([name for name in before if name.endswith(".json")]) == 2  # fingerprint, 1
        cmd = [sys.executable, str(PREDICT_TOOL), "--config-file", str(INSTANT_CONFIG)]
        cmd += ["--input", str(synthetic_root / "test_release")]
        cmd += ["--id-map", str(synthetic_root / "test_image_name_to_ids.json")]
        cmd += ["--output", str(out / "sub.json"), "--output-dir", str(out / "export")]
        cmd += ["--format", "coco,csv", "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        for extra in (["--resume"], []):
            proc = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=300, env=env)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert "another run is writing this output" in proc.stderr
            assert f"pid {os.getpid()} on " in proc.stderr and "sub.json.lock" in proc.stderr
            assert "Traceback" not in proc.stderr
            assert {p.name: p.read_bytes() for p in work.iterdir()} == before
            assert not (out / "sub.json").exists()
    finally:
        first.gate.set()
        thread.join(timeout=300)
    assert not failures and not thread.is_alive()
    for name in ("sub.json", "export/cells.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["export", "sub.json"], "locks removed"


def test_run_removes_stale_temps_of_its_outputs(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    entries = load_id_map(synthetic_root / "test_image_name_to_ids.json")
    stem = Path(entries[0]["file_name"]).stem
    stale = [
        out / ".sub.json.ab12cd34.tmp",
        out / "export" / ".cells.csv.x1y2z3w4.tmp",
        out / "export" / "labels" / f".{stem}_instances.tif.q1w2e3r4.tmp",
        work_dir_for(out / "sub.json") / f".{entries[0]['id']}.json.zz99zz99.tmp",
    ]
    foreign = out / "export" / "labels" / ".someone_else.tif.ab12cd34.tmp"
    for path in [*stale, foreign]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 1000)
    (work_dir_for(out / "sub.json") / "fingerprint.json").write_text(json.dumps({"run": "gated"}))
    formats = ("coco", "csv", "labels")
    _stream(synthetic_root, out, _GatedPredictor(gated=False), formats, resume=True)
    assert not [path for path in stale if path.exists()]
    assert foreign.exists()


def _tool(images: Path, id_map: Path, *flags: str) -> int:
    tool = load_tool(PREDICT_TOOL)
    argv = ["--config-file", str(INSTANT_CONFIG), "--input", str(images), "--id-map", str(id_map)]
    return tool.main(tool.parse_args([*argv, "--no-progress", *flags, "MODEL.DEVICE", "cpu"]))


def test_tool_refuses_an_output_that_is_a_folder_before_work(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "sub.json"
    (folder / "inside").mkdir(parents=True)
    images, id_map = synthetic_root / "test_release", synthetic_root / "test_image_name_to_ids.json"
    assert _tool(images, id_map, "--output", str(folder)) == 2
    err = capsys.readouterr().err
    assert f"{folder}: is a folder" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["inside", "sub.json"]


def test_tool_refuses_colliding_export_names(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    entries = load_id_map(synthetic_root / "test_image_name_to_ids.json")
    images = tmp_path / "images"
    images.mkdir()
    renamed = [dict(entries[0], file_name="cell.tif"), dict(entries[1], file_name="cell.tiff")]
    for old, new in zip(entries, renamed):
        shutil.copy(synthetic_root / "test_release" / old["file_name"], images / new["file_name"])
    id_map = tmp_path / "ids.json"
    id_map.write_text(json.dumps(renamed))
    export = tmp_path / "export"
    earlier = export / "labels" / "cell_instances.tif"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"earlier")
    flags = ["--format", "labels,geojson", "--output-dir", str(export)]
    assert _tool(images, id_map, *flags) == 2
    err = capsys.readouterr().err
    assert "cell.tif and cell.tiff would write the same export files" in err
    assert earlier.read_bytes() == b"earlier"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in export.rglob("*")) == [
        "export/labels",
        "export/labels/cell_instances.tif",
    ]
    assert not work_dir_for(export).exists()
