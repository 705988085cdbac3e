"""tools/export_model.py and cellseg_d2.modeling.export: exported models equal the eager model.

A model trained for a few iterations on the synthetic fixture is exported to TorchScript and to
ONNX (opset 17) from one input size, then compared with the eager model on that size and on
one not used at export: the detections must match as sets (same classes, boxes within 1e-3 px,
scores within 1e-4, 28x28 mask probabilities within 1e-4), the pasted detections of
:class:`ExportedPredictor` must equal :class:`CellPredictor`'s, and the folder must run in a
fresh process where importing detectron2 fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from cellseg_d2.config import load_cellseg_config
from cellseg_d2.data import register_cell_datasets
from cellseg_d2.data.synthetic import synthesize_image
from cellseg_d2.engine.trainer import CellTrainer
from cellseg_d2.inference.exported import METADATA_FILE, ExportedPredictor
from cellseg_d2.inference.model_export import compare_with_eager
from cellseg_d2.inference.predictor import CellPredictor
from cellseg_d2.modeling.export import raw_inference
from cellseg_d2.utils.files import sha256_file
from tests.conftest import INSTANT_CONFIG, REPO_ROOT, instant_cfg, load_tool

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")
pytest.importorskip("onnx", reason="the export extra (onnx, onnxruntime) is not installed")

EXPORT_TOOL = REPO_ROOT / "tools" / "export_model.py"
#: (height, width) of the test images: the first resizes to the export's sample input size
#: (128 x 160), the second to 85 x 256, a size the export never saw.
SIZES = ((128, 160), (100, 300))
BOX_TOL, SCORE_TOL, MASK_TOL = 1e-3, 1e-4, 1e-4


def _bgr(height: int, width: int, seed: int) -> np.ndarray:
    rgb, _ = synthesize_image(np.random.default_rng(seed), height, width)
    return np.ascontiguousarray(rgb[:, :, 2::-1])


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Weights of the instant config after 8 iterations on the synthetic dataset."""
    output = tmp_path_factory.mktemp("export_train")
    names = register_cell_datasets(synthetic_root, prefix="t_export", val_fraction=0.25, seed=0)
    try:
        cfg = instant_cfg("t_export", output, "SOLVER.MAX_ITER", 8, "SOLVER.BASE_LR", 0.002)
        trainer = CellTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    yield output / "model_final.pth"


def _opts(weights: Path) -> list[str]:
    return ["MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module", params=["torchscript", "onnx"])
def exported(request, trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model exported by the tool, once per format."""
    output = tmp_path_factory.mktemp("exported") / request.param
    tool = load_tool(EXPORT_TOOL)
    args = tool.parse_args(
        ["--config-file", str(INSTANT_CONFIG), "--format", request.param, "--output", str(output)]
        + _opts(trained)
    )
    assert tool.main(args) == 0
    return output


@pytest.fixture(scope="module")
def eager(trained: Path) -> CellPredictor:
    """The eager predictor of the same weights."""
    cfg = load_cellseg_config(INSTANT_CONFIG, _opts(trained))
    cfg.freeze()
    return CellPredictor(cfg)


def _match_raw(eager_out, exported_out) -> int:
    """Match detections as sets; return how many matched (all, or the assertion fails)."""
    e_boxes, e_classes, e_scores, e_masks = (t.detach().float() for t in eager_out)
    x_boxes, x_classes, x_scores, x_masks = (t.detach().float() for t in exported_out)
    assert len(e_boxes) == len(x_boxes)
    unused = set(range(len(x_boxes)))
    for i in range(len(e_boxes)):
        candidates = [
            j
            for j in unused
            if x_classes[j] == e_classes[i]
            and float((x_boxes[j] - e_boxes[i]).abs().max()) <= BOX_TOL
            and abs(float(x_scores[j] - e_scores[i])) <= SCORE_TOL
        ]
        assert candidates, f"eager detection {i} has no exported match"
        j = min(candidates, key=lambda k: float((x_masks[k] - e_masks[i]).abs().max()))
        assert float((x_masks[j] - e_masks[i]).abs().max()) <= MASK_TOL
        unused.remove(j)
    return len(e_boxes)


@pytest.mark.parametrize("size", SIZES, ids=["export_size", "other_size"])
def test_exported_raw_outputs_equal_eager(exported: Path, eager: CellPredictor, size) -> None:
    image = _bgr(*size, seed=size[0])
    predictor = ExportedPredictor(exported)
    outputs, input_size = predictor.raw_outputs(image)
    model_input = eager.model_input(image)["image"]
    assert tuple(model_input.shape[1:]) == input_size  # the same resize as the eager path
    with torch.no_grad():
        reference = raw_inference(eager.model, model_input.float())
    scores = reference[2]
    assert len(scores) > 5 and float(scores.max() - scores.min()) > 0.01  # not degenerate
    assert _match_raw(reference, outputs) == len(scores)


def test_exported_predictor_equals_cell_predictor(exported: Path, eager: CellPredictor) -> None:
    images = [_bgr(*size, seed=size[1]) for size in SIZES]
    ours = ExportedPredictor(exported)(images)
    theirs = eager(images)
    for mine, reference in zip(ours, theirs):
        assert len(mine) == len(reference) > 0
        for a, b in zip(mine, reference):
            assert a.category == b.category and abs(a.score - b.score) <= SCORE_TOL
            assert (a.top, a.left) == (b.top, b.left)
            assert np.array_equal(a.mask, b.mask)


# Runs in a new interpreter where importing detectron2 fails, as on a machine without it.
_FRESH_PROCESS = """
import importlib.abc, json, sys
import numpy as np

class NoDetectron2(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "detectron2":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoDetectron2())
from cellseg_d2.inference.exported import ExportedPredictor

image = np.load(sys.argv[2])
detections = ExportedPredictor(sys.argv[1])([image])[0]
assert "detectron2" not in sys.modules, "detectron2 was imported"
print(json.dumps([[d.category, d.score, d.top, d.left, int(d.mask.sum())] for d in detections]))
"""


def test_runs_in_a_fresh_process_without_detectron2(
    exported: Path, eager: CellPredictor, tmp_path: Path
) -> None:
    image = _bgr(*SIZES[1], seed=7)
    np.save(tmp_path / "image.npy", image)
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(exported), str(tmp_path / "image.npy")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    want = [[d.category, d.score, d.top, d.left, int(d.mask.sum())] for d in eager([image])[0]]
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a[0] == b[0] and abs(a[1] - b[1]) <= SCORE_TOL and a[2:] == b[2:]


def test_export_time_comparison_reports_equal(exported: Path, eager: CellPredictor) -> None:
    report = compare_with_eager(eager.cfg, eager.model, exported)
    assert report["eager_detections"] == report["exported_detections"] > 0
    assert report["equal"] == 1.0 and report["scores"] <= 1e-4


def test_metadata_fields(exported: Path, trained: Path) -> None:
    meta = json.loads((exported / METADATA_FILE).read_text())
    fmt = exported.name
    assert meta["format"] == fmt and meta["format_version"] == 1
    assert meta["opset"] == (17 if fmt == "onnx" else None)
    assert meta["model_sha256"] == sha256_file(exported / meta["model_file"])
    assert meta["class_names"] == ["epithelial", "lymphocyte", "neutrophil", "macrophage"]
    assert meta["class_colors"][0] == [230, 25, 75] and len(meta["class_colors"]) == 4
    assert meta["pixel_size"] is None
    assert meta["input"]["format"] == "BGR" and meta["input"]["pixel_mean"][0] == 103.53
    assert (meta["input"]["min_size"], meta["input"]["max_size"]) == (128, 256)
    assert meta["score_threshold"] == 0.05 and meta["mask_threshold"] == 0.5
    assert str(trained) in meta["config"] and "CellRCNN" in meta["config"]


def test_tool_refuses_bad_input_with_exit_2(tmp_path: Path, capsys) -> None:
    tool = load_tool(EXPORT_TOOL)
    base = ["--config-file", str(INSTANT_CONFIG), "--format", "onnx"]
    # an existing folder is not replaced without --overwrite
    existing = tmp_path / "existing"
    existing.mkdir()
    assert tool.main(tool.parse_args(base + ["--output", str(existing)])) == 2
    assert str(existing) in capsys.readouterr().err
    # opset 11 exports aligned ROIAlign wrongly
    out = tmp_path / "low"
    assert tool.main(tool.parse_args(base + ["--output", str(out), "--opset", "11"])) == 2
    assert "opset 11" in capsys.readouterr().err and not out.exists()
    # unreadable weights name the file, and no partial folder is left behind
    missing = tmp_path / "missing.pth"
    opts = ["MODEL.WEIGHTS", str(missing)]
    assert tool.main(tool.parse_args(base + ["--output", str(out)] + opts)) == 2
    assert str(missing) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


# ---- predict.py --model: an exported model as a drop-in for prediction ----------------------

PREDICT_TOOL = REPO_ROOT / "tools" / "predict.py"


def test_predict_with_the_exported_model_writes_what_eager_writes(
    exported: Path, trained: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    eager, other = tmp_path / "eager", tmp_path / "exported"
    config = ["--config-file", str(INSTANT_CONFIG)]
    tool = load_tool(PREDICT_TOOL)
    common = [
        "--input", str(synthetic_root / "test_release"),
        "--id-map", str(synthetic_root / "test_image_name_to_ids.json"),
        "--format", "coco,labels,geojson,csv", "--no-progress",
    ]  # fmt: skip
    for out, flags in (
        (eager, [*config, *common, *_opts(trained)]),
        (other, ["--model", str(exported), *common]),
    ):
        paths = ["--output", str(out / "results.json"), "--output-dir", str(out / "exports")]
        flags = flags[:2] + paths + flags[2:] if flags[0] == "--config-file" else flags + paths
        assert tool.main(tool.parse_args(flags)) == 0
    ours = json.loads((other / "results.json").read_text())
    reference = json.loads((eager / "results.json").read_text())
    assert len(ours) == len(reference) > 0
    for a, b in zip(ours, reference):
        assert (a["image_id"], a["category_id"], a["bbox"]) == (
            b["image_id"],
            b["category_id"],
            b["bbox"],
        )
        assert a["segmentation"] == b["segmentation"]
        assert abs(a["score"] - b["score"]) <= SCORE_TOL
    for path in sorted((eager / "exports" / "labels").iterdir()):
        assert (other / "exports" / "labels" / path.name).read_bytes() == path.read_bytes()


def test_predict_with_a_corrupted_model_folder_exits_2_naming_the_file(
    exported: Path, synthetic_root: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    meta = json.loads((broken / METADATA_FILE).read_text())
    model_file = broken / meta["model_file"]
    model_file.write_bytes(model_file.read_bytes()[:-10])
    tool = load_tool(PREDICT_TOOL)
    args = tool.parse_args(
        ["--model", str(broken), "--input", str(synthetic_root / "test_release"),
         "--id-map", str(synthetic_root / "test_image_name_to_ids.json"),
         "--output", str(tmp_path / "r.json"), "--no-progress"]
    )  # fmt: skip
    assert tool.main(args) == 2
    assert str(model_file) in capsys.readouterr().err
