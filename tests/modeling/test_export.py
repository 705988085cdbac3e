"""Tracing the cell Mask R-CNN: raw outputs before the paste, the adapter's refusal of models
without masks, TorchScript files equal to the eager model, and the ONNX opset floor.

The model is the instant config's, randomly initialised with a fixed seed and a score threshold
of 0, so it predicts many boxes without any training; outputs are compared with the eager model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.export import TracingAdapter
from detectron2.modeling import build_model

from cellseg_d2.config import load_cellseg_config
from cellseg_d2.modeling import CellRCNN
from cellseg_d2.modeling.export import (
    MIN_ONNX_OPSET,
    ONNX_OPSET,
    export_onnx,
    export_torchscript,
    raw_inference,
    tracing_adapter,
)
from tests.conftest import INSTANT_CONFIG

#: Network input sizes: the one traced, and one the trace never saw.
TRACED, OTHER = (64, 96), (96, 64)
OUTPUT_NAMES = ["boxes", "classes", "scores", "mask_probs"]


def _model(*opts: object) -> CellRCNN:
    cfg = load_cellseg_config(
        INSTANT_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, *opts]
    )
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _image(height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator).float()


@pytest.fixture(scope="module")
def model() -> CellRCNN:
    return _model()


def _assert_same_outputs(got, want) -> None:
    assert len(got) == len(want) == 4
    for a, b, name in zip(got, want, OUTPUT_NAMES):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.allclose(a, b, atol=1e-4), name


def test_opsets() -> None:
    # torchvision's aligned RoiAlign needs ONNX opset 16's half_pixel mode.
    assert (MIN_ONNX_OPSET, ONNX_OPSET) == (16, 17)


def test_raw_inference_gives_four_tensors_at_the_input_scale(model: CellRCNN) -> None:
    image = _image(*TRACED, seed=1)
    with torch.no_grad():
        boxes, classes, scores, masks = raw_inference(model, image)
    count = len(scores)
    assert count > 10  # score threshold 0: an untrained model still proposes
    assert boxes.shape == (count, 4) and boxes.dtype == torch.float32
    assert classes.shape == (count,) and classes.dtype == torch.int64
    assert classes.min() >= 0 and classes.max() < 4
    assert masks.shape == (count, 1, 28, 28)
    assert 0.0 <= float(masks.min()) and float(masks.max()) <= 1.0
    assert ((masks > 0.01) & (masks < 0.99)).any()  # probabilities, not binarised masks
    assert (boxes[:, 2] <= TRACED[1]).all() and (boxes[:, 3] <= TRACED[0]).all()
    # The same detections the full model gives when the output size is the input size.
    with torch.no_grad():
        full = model([{"image": image, "height": TRACED[0], "width": TRACED[1]}])[0]["instances"]
    assert torch.allclose(full.pred_boxes.tensor, boxes) and torch.equal(full.scores, scores)
    assert torch.equal(full.pred_classes, classes)
    assert full.pred_masks.shape == (count, *TRACED)  # the paste happens outside the graph


def test_tracing_adapter_wraps_mask_models_only(model: CellRCNN) -> None:
    model.train()
    adapter = tracing_adapter(model, _image(*TRACED, seed=1))
    assert isinstance(adapter, TracingAdapter) and not model.training  # put in eval mode
    with pytest.raises(ValueError, match=r"only Mask R-CNN models \(MODEL.MASK_ON True\)"):
        tracing_adapter(_model("MODEL.MASK_ON", False), _image(*TRACED, seed=1))


def test_torchscript_file_equals_the_eager_model_at_another_size(
    model: CellRCNN, tmp_path: Path
) -> None:
    path = tmp_path / "model.ts"
    export_torchscript(model, _image(*TRACED, seed=1), path, extra_files={"meta.json": "{}"})
    extra = {"meta.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert extra["meta.json"] == b"{}"
    for size, seed in ((TRACED, 2), (OTHER, 3)):
        image = _image(*size, seed=seed)
        with torch.no_grad():
            want = raw_inference(model, image)
            got = loaded(image)
        assert len(want[0]) > 10
        _assert_same_outputs(got, want)


def test_onnx_opset_below_the_floor_is_refused_before_tracing(
    model: CellRCNN, tmp_path: Path
) -> None:
    pytest.importorskip("onnx", reason="the export extra (onnx, onnxruntime) is not installed")
    path = tmp_path / "model.onnx"
    with pytest.raises(ValueError) as info:
        export_onnx(
            model,
            _image(*TRACED, seed=1),
            path,
            opset=MIN_ONNX_OPSET - 1,
            input_name="image",
            output_names=OUTPUT_NAMES,
        )
    message = str(info.value)
    assert "ONNX opset 15 exports aligned ROIAlign wrongly" in message
    assert "use 16 or above (default 17)" in message
    assert not path.exists()


def test_onnx_file_has_dynamic_sizes_metadata_and_eager_outputs(
    model: CellRCNN, tmp_path: Path
) -> None:
    onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
    ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    path = tmp_path / "model.onnx"
    export_onnx(
        model,
        _image(*TRACED, seed=1),
        path,
        opset=MIN_ONNX_OPSET,
        input_name="image",
        output_names=OUTPUT_NAMES,
        metadata_props={"classes": "a,b,c,d", "format": "cellseg"},
    )
    assert not model.training  # the exporter's train mode is undone
    proto = onnx.load(str(path))
    assert {p.key: p.value for p in proto.metadata_props} == {
        "classes": "a,b,c,d",
        "format": "cellseg",
    }
    assert {o.domain: o.version for o in proto.opset_import}.get("", None) == MIN_ONNX_OPSET
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "image" and [d.dim_param for d in dims[1:]] == ["height", "width"]
    assert [o.name for o in proto.graph.output] == OUTPUT_NAMES
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = _image(*OTHER, seed=3)
    got = [torch.from_numpy(v) for v in session.run(None, {"image": image.numpy()})]
    with torch.no_grad():
        want = raw_inference(model, image)
    assert len(got[2]) == len(want[2]) > 10
    # ONNX Runtime may order equal-score detections differently: compare sorted by score
    order_got, order_want = torch.argsort(got[2]), torch.argsort(want[2])
    for a, b, name in zip(got, want, OUTPUT_NAMES):
        assert torch.allclose(a[order_got].float(), b[order_want].float(), atol=1e-3), name
