"""cellseg_d2.inference.exported: the detectron2-free runtime of exported models.

The resize that replaces detectron2's is checked against detectron2 (the paste, box rescale and
tiling it shares with the eager predictor are tested in test_detections.py); the predictor and
the folder checks run on small fake graphs (TorchScript and ONNX) with the exported interface, so
no Mask R-CNN is exported here (tests/inference/test_model_export.py does that).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T

from cellseg_d2.config import get_cellseg_cfg
from cellseg_d2.errors import CellSegError
from cellseg_d2.inference import detections as free
from cellseg_d2.inference.exported import (
    EMBEDDED_KEY,
    INPUT_NAME,
    METADATA_FILE,
    MODEL_FILES,
    OUTPUT_NAMES,
    ExportedModelError,
    ExportedPredictor,
    resize_image,
    resized_shape,
)
from cellseg_d2.inference.model_export import build_metadata, check_export_target
from cellseg_d2.utils.files import sha256_file

#: The fake graph's boxes as fractions of the input (x0, y0, x1, y1).
FRACTIONS = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.25, 0.0, 1.0, 0.5]])


class FakeGraph(torch.nn.Module):
    """The exported interface with known answers: two boxes at fixed fractions of the input,
    classes 1 and 3, both scored by the mean of the first input channel / 255, full masks."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # sizes as tensors computed from the input, so the trace stays size-generic
        height, width = torch.ones_like(image[0, :, 0]).sum(), torch.ones_like(image[0, 0]).sum()
        scale = torch.stack([width, height, width, height])
        boxes = FRACTIONS * scale
        score = image[0].mean() / 255.0
        scores = torch.stack([score, score * 0.5])
        classes = torch.tensor([1, 3])
        masks = torch.ones(2, 1, 28, 28)
        return boxes, classes, scores, masks


def _write_folder(folder: Path, fmt: str = "torchscript", **cfg_opts: object) -> Path:
    """An exported folder around :class:`FakeGraph`, with metadata from the default config and
    ``cfg_opts`` (the resize is 64..128)."""
    folder.mkdir(parents=True)
    input_format = cfg_opts.get("INPUT.FORMAT", "BGR")
    embedded = json.dumps({"format_version": 1, "num_classes": 4, "input_format": input_format})
    path = folder / MODEL_FILES[fmt]
    graph = FakeGraph()
    sample = torch.zeros(3, 40, 60)
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(graph, (sample,)), str(path), {EMBEDDED_KEY: embedded})
    else:
        onnx = pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
        dynamic = {INPUT_NAME: {1: "h", 2: "w"}}
        torch.onnx.export(
            graph,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
        )
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, {EMBEDDED_KEY: embedded})
        onnx.save(proto, str(path))
    cfg = get_cellseg_cfg()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 128])
    cfg.merge_from_list([item for pair in cfg_opts.items() for item in pair])
    colors = [[10 * k, 0, 0] for k in range(len(cfg.DATASETS.CLASS_NAMES))]
    meta = build_metadata(cfg, fmt, sha256_file(path), 17 if fmt == "onnx" else None, colors)
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    return folder


def _edit_metadata(folder: Path, **changes: object) -> None:
    meta = json.loads((folder / METADATA_FILE).read_text())
    meta.update(changes)
    (folder / METADATA_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("size", [(100, 150), (150, 100), (64, 64), (30, 400), (517, 231)])
def test_resize_matches_detectron2(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(size))
    augmentation = T.ResizeShortestEdge([64, 64], 128)
    for dtype in (np.uint8, np.float32):
        image = (rng.random((*size, 3)) * 255).astype(dtype)
        transform = augmentation.get_transform(image)
        assert resized_shape(*size, 64, 128) == (transform.new_h, transform.new_w)
        ours = resize_image(image, transform.new_h, transform.new_w)
        assert ours.dtype == dtype and np.array_equal(ours, transform.apply_image(image))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_predictor_rescales_boxes_and_pastes(tmp_path: Path, fmt: str) -> None:
    folder = _write_folder(tmp_path / "model", fmt)
    image = np.zeros((96, 144, 3), np.uint8)
    image[..., 0] = 204  # blue: the fake graph scores by its first channel (BGR model)
    predictor = ExportedPredictor(folder, mask_thresh=0.5)
    (detections,) = predictor([image])
    assert [d.category for d in detections] == [1, 3]
    assert detections[0].score == pytest.approx(0.8, abs=1e-6)
    # the boxes come back in image pixels whatever the network input size was (64 x 96)
    # box 1: 0.1..0.5 x 144, 0.2..0.6 x 96 = (14.4, 19.2, 72, 57.6): the paste covers the
    # pixels whose centres the box covers; box 2 has whole-pixel edges (36, 0, 144, 48)
    assert detections[0].box == (14, 19, 72, 58)
    assert detections[1].box == (36, 0, 144, 48)
    # a higher score threshold filters; a lower one than exported cannot be honoured
    assert len(ExportedPredictor(folder, score_thresh=0.5)([image])[0]) == 1
    with pytest.raises(ExportedModelError, match="below the exported"):
        ExportedPredictor(folder, score_thresh=0.01)


def test_predictor_flips_to_rgb_and_tiles(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "model", **{"INPUT.FORMAT": "RGB"})
    _edit_metadata(folder, tiling={"max_size": 150, "tile_size": 100, "overlap": 40})
    image = np.zeros((90, 120, 3), np.uint8)
    image[..., 2] = 102  # red: the first channel once flipped to RGB
    predictor = ExportedPredictor(folder)
    assert predictor([image])[0][0].score == pytest.approx(0.4, abs=1e-6)
    big = np.zeros((120, 260, 3), np.uint8)
    big[..., 2] = 102
    tiled = predictor([big])[0]
    windows = free.tile_windows(120, 260, 100, 40)
    per_tile = [(w, free.raw_outputs_to_detections(*_fake_raw(w), 0.5)) for w in windows]
    want = free.merge_tile_detections(per_tile, 120, 260)
    assert len(windows) == 8 and [d.box for d in tiled] == [d.box for d in want]
    # metadata that contradicts the facts inside the model file is refused, naming the file
    meta = json.loads((folder / METADATA_FILE).read_text())
    meta["input"]["format"] = "BGR"
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ExportedModelError, match="model.ts: the model takes RGB input"):
        ExportedPredictor(folder)


def _fake_raw(window: tuple[int, int, int, int]) -> tuple:
    """What :class:`FakeGraph` gives a tile of the test image, with the tile's input and
    output sizes."""
    height, width = window[2] - window[0], window[3] - window[1]
    size = resized_shape(height, width, 64, 128)
    boxes, classes, scores, masks = FakeGraph()(torch.full((3, *size), 102.0))
    return boxes, classes, scores, masks, size, height, width


@pytest.mark.parametrize(
    ("damage", "named", "match"),
    [
        ("no_metadata", METADATA_FILE, "missing"),
        ("bad_json", METADATA_FILE, "unreadable"),
        ("version", METADATA_FILE, "format_version 99"),
        ("truncated", "model.ts", "sha256 differs"),
        ("truncated_rehashed", "model.ts", "not a loadable TorchScript"),
        ("no_model", "model.ts", "not found"),
        ("class_count", "model.ts", "predicts 4 classes"),
        ("colors", METADATA_FILE, "not one colour per class"),
        ("sizes", METADATA_FILE, "positive integers"),
    ],
)
def test_corrupted_folder_names_the_file(tmp_path: Path, damage: str, named: str, match: str):
    folder = _write_folder(tmp_path / "model")
    model = folder / "model.ts"
    if damage == "no_metadata":
        (folder / METADATA_FILE).unlink()
    elif damage == "bad_json":
        (folder / METADATA_FILE).write_text('{"format_version": 1,')
    elif damage == "version":
        _edit_metadata(folder, format_version=99)
    elif damage.startswith("truncated"):
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
        if damage == "truncated_rehashed":
            _edit_metadata(folder, model_sha256=sha256_file(model))
    elif damage == "no_model":
        model.unlink()
    elif damage == "class_count":
        _edit_metadata(folder, class_names=["a", "b", "c"], class_colors=[[1, 2, 3]] * 3)
    elif damage == "colors":
        _edit_metadata(folder, class_colors=[[1, 2, 3]])
    elif damage == "sizes":
        meta = json.loads((folder / METADATA_FILE).read_text())
        meta["input"]["min_size"] = "800"
        (folder / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ExportedModelError, match=match) as info:
        ExportedPredictor(folder)
    assert isinstance(info.value, CellSegError) and str(folder / named) in str(info.value)


def test_truncated_onnx_names_the_file(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "model", "onnx")
    model = folder / "model.onnx"
    model.write_bytes(model.read_bytes()[:200])
    _edit_metadata(folder, model_sha256=sha256_file(model))
    with pytest.raises(ExportedModelError, match="not a loadable ONNX model") as info:
        ExportedPredictor(folder)
    assert str(model) in str(info.value)


def test_export_target_checks_protect_other_folders(tmp_path: Path) -> None:
    assert check_export_target("onnx", tmp_path / "new", None, False) == 17
    assert check_export_target("torchscript", tmp_path / "new", None, False) is None
    with pytest.raises(ExportedModelError, match="opset 11"):
        check_export_target("onnx", tmp_path / "new", 11, False)
    folder = _write_folder(tmp_path / "model")
    with pytest.raises(ExportedModelError, match="--overwrite"):
        check_export_target("torchscript", folder, None, False)
    assert check_export_target("onnx", folder, 16, True) == 16  # an export: may be replaced
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ExportedModelError, match="notes.txt"):
        check_export_target("torchscript", folder, None, True)
    assert (folder / "notes.txt").read_text() == "mine"
