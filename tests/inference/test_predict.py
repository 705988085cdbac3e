"""Prediction: crop-based mask paste, tiling, the predict tool and its input checks."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from cellseg_d2.data import decode_rle, label_image_to_instances
from cellseg_d2.data.synthetic import synthesize_image
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.submission import read_submission, validate_submission
from cellseg_d2.inference.predictor import (
    CellPredictor,
    Detection,
    detections_to_results,
    merge_tile_detections,
    raw_instances_to_detections,
    tile_windows,
)
from cellseg_d2.inference.shards import skipped_list_path, work_dir_for
from tests.conftest import INSTANT_CONFIG, REPO_ROOT, instant_cfg, load_tool

PREDICT = [sys.executable, str(REPO_ROOT / "tools" / "predict.py")]


def _random_raw_instances(n: int, in_size: tuple[int, int], seed: int = 0) -> Instances:
    gen = torch.Generator().manual_seed(seed)
    h, w = in_size
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w - 20, h - 20])
    wh = 4 + torch.rand(n, 2, generator=gen) * 30
    instances = Instances(in_size)
    instances.pred_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    instances.scores = torch.rand(n, generator=gen)
    instances.pred_classes = torch.randint(0, 4, (n,), generator=gen)
    instances.pred_masks = torch.rand(n, 1, 28, 28, generator=gen)
    return instances


@pytest.mark.parametrize("threshold", [0.5, 0.6])
def test_crop_paste_equals_detectron2_postprocess(threshold: float) -> None:
    raw = _random_raw_instances(40, (120, 160))
    out_h, out_w = 150, 200  # a resized input mapped back to its original size
    ours = raw_instances_to_detections(raw, out_h, out_w, threshold)
    reference = detector_postprocess(raw, out_h, out_w, mask_threshold=threshold)
    full = [m.numpy() for m in reference.pred_masks if m.any()]
    assert len(ours) == len(full)
    for det, mask in zip(ours, full):
        pasted = np.zeros((out_h, out_w), bool)
        y, x = det.top, det.left
        pasted[y : y + det.mask.shape[0], x : x + det.mask.shape[1]] = det.mask
        assert np.array_equal(pasted, mask)
        rle = detections_to_results([det], 1, out_h, out_w)[0]["segmentation"]
        assert np.array_equal(decode_rle(rle), mask)


def test_tile_windows_cover_with_overlap() -> None:
    windows = tile_windows(100, 700, tile=256, overlap=64)
    covered = np.zeros((100, 700), int)
    for top, left, bottom, right in windows:
        covered[top:bottom, left:right] += 1
        assert right - left == 256 and bottom - top == 100
    assert covered.min() >= 1
    lefts = sorted({w[1] for w in windows})
    assert all(b - a <= 256 - 64 for a, b in zip(lefts, lefts[1:]))
    with pytest.raises(ValueError, match="OVERLAP"):
        tile_windows(100, 700, tile=64, overlap=64)


def _oracle_detections(labels: dict[int, np.ndarray], window) -> list[Detection]:
    """What a perfect model sees in a tile: every ground-truth cell, cut by the tile edges."""
    top, left, bottom, right = window
    detections = []
    for cls, label in labels.items():
        for inst in label_image_to_instances(label[top:bottom, left:right].astype(np.int64)):
            x, y, w, h = inst.bbox
            crop = decode_rle(inst.rle)[y : y + h, x : x + w]
            detections.append(Detection(cls - 1, 0.9, y, x, crop))
    return detections


def test_tiled_result_matches_untiled_on_three_tiles() -> None:
    rng = np.random.default_rng(3)
    _, labels = synthesize_image(rng, 160, 384)
    height, width = 160, 384
    whole = _oracle_detections(labels, (0, 0, height, width))
    windows = tile_windows(height, width, tile=160, overlap=48)
    assert len({w[1] for w in windows}) == 3
    tiled = merge_tile_detections(
        [(w, _oracle_detections(labels, w)) for w in windows], height, width
    )

    def keyed(dets):
        return sorted(
            (d.category, r["segmentation"]["counts"])
            for d, r in zip(dets, detections_to_results(dets, 1, height, width))
        )

    assert len(tiled) == len(whole)
    assert keyed(tiled) == keyed(whole)


def test_tile_merge_keeps_overlaps_within_a_tile() -> None:
    mask = np.ones((10, 10), bool)
    # a and b overlap (IoU 0.68) inside tile 0, both in the overlap with tile 1 (x 50..64)
    a, b = Detection(0, 0.9, 20, 52, mask), Detection(1, 0.8, 21, 51, mask)
    copy = Detection(0, 0.95, 20, 2, mask)  # `a` again, seen whole by tile 1, scoring higher
    windows = [(0, 0, 60, 64), (0, 50, 60, 114)]
    merged = merge_tile_detections([(windows[0], [a, b]), (windows[1], [copy])], 60, 114)
    assert sorted(d.score for d in merged) == [0.8, 0.95]  # b kept, a merged into its copy
    assert {(d.top, d.left) for d in merged} == {(20, 52), (21, 51)}


def test_predictor_tiles_large_images_and_batches(cells_prefix: str, tmp_path: Path) -> None:
    cfg = instant_cfg(cells_prefix, tmp_path, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    cfg.merge_from_list(["TEST.TILING.MAX_SIZE", 200, "TEST.TILING.TILE_SIZE", 128])
    cfg.merge_from_list(["TEST.TILING.OVERLAP", 32, "TEST.IMS_PER_BATCH", 2])
    predictor = CellPredictor(cfg)
    tiled_shapes = []
    untiled = predictor.predict_tiled

    def spy(image, predict):
        tiled_shapes.append(image.shape[:2])
        return untiled(image, predict)

    predictor.predict_tiled = spy
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(96, 120), (150, 330)]]
    outputs = predictor(images)
    assert tiled_shapes == [(150, 330)]  # only the image above TEST.TILING.MAX_SIZE
    assert len(outputs) == 2
    for image, detections in zip(images, outputs):
        assert detections, "a random model at score 0 still detects something"
        for det in detections:
            x0, y0, x1, y1 = det.box
            assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
            assert det.mask.any(axis=0)[[0, -1]].all() and det.mask.any(axis=1)[[0, -1]].all()


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
    from cellseg_d2.evaluation.submission import read_submission, validate_submission

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
    from cellseg_d2.evaluation.submission import validate_submission

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


def _dense_merge_reference(kept: list[Detection], tile_of: list[int]) -> list[Detection]:
    """The merge as it was before it compared only neighbouring tiles: one dense IoU matrix."""
    from torchvision.ops import box_iou

    from cellseg_d2.inference.predictor import TILE_MERGE_IOU

    boxes = torch.tensor([d.box for d in kept], dtype=torch.float32)
    iou = box_iou(boxes, boxes)
    tile_ids = torch.tensor(tile_of)
    iou[tile_ids[:, None] == tile_ids[None, :]] = 0.0
    removed = torch.zeros(len(kept), dtype=torch.bool)
    result = []
    for i in sorted(range(len(kept)), key=lambda k: -kept[k].score):
        if removed[i]:
            continue
        result.append(kept[i])
        removed[i] = True
        candidates = iou[i].masked_fill(removed, 0.0)
        for tile in torch.unique(tile_ids[candidates > TILE_MERGE_IOU]).tolist():
            removed[int(torch.argmax(candidates.masked_fill(tile_ids != tile, 0.0)))] = True
    return result


def test_tile_merge_compares_only_neighbouring_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    import cellseg_d2.inference.predictor as predictor_module

    height = width = 700
    windows = tile_windows(height, width, tile=300, overlap=60)
    assert len(windows) == 9  # 3 x 3
    rng = np.random.default_rng(5)
    cells = []  # (top, left, side) in image pixels, some in seams, most inside one tile
    for _ in range(400):
        side = int(rng.integers(4, 20))
        cells.append(
            (int(rng.integers(0, height - side)), int(rng.integers(0, width - side)), side)
        )
    tiles, kept, tile_of = [], [], []
    for index, (top, left, bottom, right) in enumerate(windows):
        dets = []
        for y, x, side in cells:
            # a whole cell, a little shifted (a model sees it slightly differently per tile)
            y2, x2 = y + int(rng.integers(0, 2)), x + int(rng.integers(0, 2))
            if (
                top + 2 <= y2
                and y2 + side <= bottom - 2
                and left + 2 <= x2
                and x2 + side <= right - 2
            ):
                mask = np.ones((side, side), bool)
                score = float(rng.random())
                dets.append(Detection(int(rng.integers(0, 4)), score, y2 - top, x2 - left, mask))
                kept.append(Detection(dets[-1].category, score, y2, x2, mask))
                tile_of.append(index)
        tiles.append(((top, left, bottom, right), dets))
    compared = []
    real_box_iou = predictor_module.box_iou

    def counting_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        compared.append((a.clone(), b.clone()))
        return real_box_iou(a, b)

    monkeypatch.setattr(predictor_module, "box_iou", counting_box_iou)
    merged = merge_tile_detections(tiles, height, width)
    expected = _dense_merge_reference(kept, tile_of)
    key = [(d.top, d.left, d.score) for d in expected]
    assert [(d.top, d.left, d.score) for d in merged] == key
    assert len(kept) - len(merged) > 50  # seam cells seen by 2-4 tiles were merged
    assert len(merged) >= len(cells) - 5  # ... without merging distinct cells (rare exact twins)
    # Every compared box reaches into an overlap zone of two windows (interior cells are never
    # compared) and the comparisons are a small fraction of the dense matrix.
    seams = np.zeros((height, width), int)
    for top, left, bottom, right in windows:
        seams[top:bottom, left:right] += 1
    for a, b in compared:
        for x0, y0, x1, y1 in torch.cat([a, b]).int().tolist():
            assert seams[y0:y1, x0:x1].max() >= 2
    pairs = sum(len(a) * len(b) for a, b in compared)
    assert 0 < pairs < len(kept) ** 2 / 20


def test_detection_cap_is_counted_and_warned_once(
    cells_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = instant_cfg(cells_prefix, tmp_path, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    cfg.merge_from_list(["TEST.DETECTIONS_PER_IMAGE", 3, "TEST.TILING.MAX_SIZE", 200])
    cfg.merge_from_list(["TEST.TILING.TILE_SIZE", 128, "TEST.TILING.OVERLAP", 32])
    predictor = CellPredictor(cfg)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(96, 120), (150, 330)]]
    outputs = predictor(images)
    caplog.clear()
    assert predictor.images_at_detection_cap == 2  # the tiled image counts once
    assert len(outputs[0]) <= 3
    # Documented: a tiled image is capped per tile, its merged result is not cut again.
    assert len(outputs[1]) > 3
    with caplog.at_level("WARNING", logger="cellseg_d2.inference.predictor"):
        predictor.warn_detection_cap(len(images))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "2 of 2 image(s)" in warnings[0] and "TEST.DETECTIONS_PER_IMAGE=3" in warnings[0]

    roomy = CellPredictor(instant_cfg(cells_prefix, tmp_path, "TEST.DETECTIONS_PER_IMAGE", 10**6))
    roomy(images[:1])
    caplog.clear()
    assert roomy.detection_cap == 10**6
    with caplog.at_level("WARNING", logger="cellseg_d2.inference.predictor"):
        roomy.warn_detection_cap(1)
    assert roomy.images_at_detection_cap == 0
    assert not [r for r in caplog.records if "detection cap" in r.getMessage()]


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
        features = json.loads(paths["geojson"].read_text())["features"]
        assert len(features) == len(mine)
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
