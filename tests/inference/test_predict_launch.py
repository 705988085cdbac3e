"""Prediction on several processes: shards without gaps or duplicates, outputs byte-equal to one
process (two CPU ranks over gloo through detectron2's launch)."""

from __future__ import annotations

from pathlib import Path

import torch
from detectron2.modeling import build_model

from cellseg_d2.data.validate import check_test_images, list_tiff_images
from cellseg_d2.inference.predict import build_predict_config, predict_to_files
from cellseg_d2.inference.predict_launch import distributed_images, rank_entries
from cellseg_d2.inference.predictor import CellPredictor
from cellseg_d2.inference.shards import prediction_fingerprint
from tests.conftest import INSTANT_CONFIG

FORMATS = ["coco", "labels", "geojson", "csv"]


def test_ranks_cover_every_entry_once() -> None:
    entries = [{"id": i} for i in range(11)]
    for world in (1, 2, 3, 5, 16):
        shares = [rank_entries(entries, rank, world) for rank in range(world)]
        ids = sorted(e["id"] for share in shares for e in share)
        assert ids == list(range(11))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.endswith(".lock")
    }


def test_two_cpu_processes_write_what_one_process_writes(
    synthetic_root: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "random.pth"
    opts = ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.05]
    with torch.random.fork_rng():  # leave the global RNG as other tests expect it
        torch.manual_seed(0)
        torch.save(
            {"model": build_model(build_predict_config(INSTANT_CONFIG, opts)).state_dict()}, weights
        )
    cfg = build_predict_config(INSTANT_CONFIG, [*opts, "MODEL.WEIGHTS", str(weights)])
    images = synthetic_root / "test_release"
    entries = check_test_images(
        synthetic_root / "test_image_name_to_ids.json", list_tiff_images(images)
    )
    fingerprint = prediction_fingerprint(cfg, False, FORMATS, entries)
    outputs = {}
    for name, processes in (("one", 1), ("two", 2)):
        out = tmp_path / name
        out.mkdir()
        common = dict(
            formats=FORMATS,
            fingerprint=fingerprint,
            class_names=cfg.DATASETS.CLASS_NAMES,
            output=out / "results.json",
            output_dir=out / "exports",
            progress=False,
        )
        if processes == 1:
            # CPU results depend on the thread count; the ranks run one thread each here
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                summary = predict_to_files(CellPredictor(cfg), images, entries, **common)
            finally:
                torch.set_num_threads(threads)
        else:
            distribute = distributed_images(cfg, False, images, fingerprint, num_gpus=2)
            summary = predict_to_files(None, images, entries, distribute=distribute, **common)
        assert summary.predicted == len(entries) and not summary.skipped
        assert summary.work_dir is None  # assembled and cleaned up
        outputs[name] = (_files(out), summary.detections)
    assert outputs["one"][1] > 0
    assert outputs["two"] == outputs["one"]
