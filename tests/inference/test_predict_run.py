"""run_prediction and tools/predict.py on any input: images without an id map, whole slides,
mixed folders, and the refusals (named file, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from shapely.geometry import shape

from cellseg_d2.data.io import read_image
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.predict import build_predict_config
from cellseg_d2.inference.predict_run import PredictionRun, assigned_ids_path, run_prediction
from tests.conftest import INSTANT_CONFIG, REPO_ROOT, SHARED_DATA, load_tool

SLIDES = SHARED_DATA / "slides"
PREDICT_TOOL = REPO_ROOT / "tools" / "predict.py"


def _slide(name: str) -> Path:
    path = SLIDES / name
    if not path.is_file():
        pytest.skip(f"{path} absent (../shared/data/slides not beside the checkout)")
    return path


def _cfg(*opts: object):
    return build_predict_config(
        INSTANT_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.05, *opts]
    )


def _png_folder(synthetic_root: Path, folder: Path) -> list[str]:
    """The synthetic test images as PNG (RGB), under new names."""
    folder.mkdir()
    names = []
    for index, tif in enumerate(sorted((synthetic_root / "test_release").glob("*.tif"))):
        name = f"crop_{2 - index}.png"  # name order differs from the TIFF order
        Image.fromarray(read_image(tif)[:, :, ::-1]).save(folder / name)
        names.append(name)
    return sorted(names)


def test_png_folder_without_id_map_numbers_images_by_name(
    synthetic_root: Path, tmp_path: Path
) -> None:
    names = _png_folder(synthetic_root, tmp_path / "pngs")
    run = PredictionRun(
        source=tmp_path / "pngs",
        formats=("coco", "labels"),
        output=tmp_path / "out" / "results.json",
        output_dir=tmp_path / "out" / "exports",
        progress=False,
    )
    report = run_prediction(run, _cfg(), None)
    assert report.images is not None and report.images.predicted == len(names)
    assert (
        report.ids_file
        == assigned_ids_path(run)
        == tmp_path / "out" / "results.json.image_ids.json"
    )
    ids = json.loads(report.ids_file.read_text())
    assert [entry["file_name"] for entry in ids] == names
    assert [entry["id"] for entry in ids] == [1, 2, 3]
    results = json.loads(run.output.read_text())
    assert {r["image_id"] for r in results} <= {1, 2, 3} and results
    for name in names:
        assert (run.output_dir / "labels" / f"{Path(name).stem}_instances.tif").is_file()


def test_real_slide_through_the_tool(tmp_path: Path) -> None:
    svs = _slide("cmu-1-small-region.svs")
    tool = load_tool(PREDICT_TOOL)
    out = tmp_path / "cells"
    args = tool.parse_args(
        ["--config-file", str(INSTANT_CONFIG), "--input", str(svs), "--format", "geojson,csv",
         "--output-dir", str(out), "--no-progress", "MODEL.DEVICE", "cpu",
         "INPUT.PIXEL_SIZE", "1.0", "TEST.TILING.TILE_SIZE", "512",
         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05"]
    )  # fmt: skip
    assert tool.main(args) == 0
    geojson = json.loads((out / "cmu-1-small-region.geojson").read_text())
    rows = (out / "cmu-1-small-region.cells.csv").read_text().splitlines()
    assert len(rows) - 1 == len(geojson["features"])
    for feature in geojson["features"]:  # level-0 pixels of the 2220 x 2967 slide
        x0, y0, x1, y1 = shape(feature["geometry"]).bounds
        assert 0 <= x0 < x1 <= 2220 and 0 <= y0 < y1 <= 2967


@pytest.mark.parametrize(
    ("name", "flags", "message"),
    [
        ("tcga-cr-7395-01a-01-ts1.svs", [], "--pixel-size"),
        ("broken.svs", [], "broken.svs"),
        ("unreadable.svs", [], "unreadable.svs"),
    ],
)
def test_bad_slides_exit_2_naming_the_file(
    tmp_path: Path, capsys, name: str, flags: list[str], message: str
) -> None:
    slide = _slide(name)
    tool = load_tool(PREDICT_TOOL)
    args = tool.parse_args(
        ["--config-file", str(INSTANT_CONFIG), "--input", str(slide), "--format", "geojson",
         "--output-dir", str(tmp_path / "o"), "--no-progress", *flags, "MODEL.DEVICE", "cpu",
         "INPUT.PIXEL_SIZE", "0.5"]
    )  # fmt: skip
    assert tool.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_coco_for_slides_only_and_slides_with_an_exported_model_are_refused(
    tmp_path: Path,
) -> None:
    svs = _slide("small.svs")
    run = PredictionRun(source=svs, formats=("coco",), output=tmp_path / "r.json", progress=False)
    with pytest.raises(CellDataError, match="whole slides are written as geojson, csv, labels"):
        run_prediction(run, _cfg(), None)
    run = PredictionRun(
        source=svs, formats=("coco", "geojson"), output=tmp_path / "r.json", progress=False
    )
    with pytest.raises(CellDataError, match="need --output-dir"):
        run_prediction(run, _cfg(), None)


def test_id_map_is_still_checked_against_the_images(synthetic_root: Path, tmp_path: Path) -> None:
    _png_folder(synthetic_root, tmp_path / "pngs")
    run = PredictionRun(
        source=tmp_path / "pngs",
        formats=("coco",),
        output=tmp_path / "r.json",
        id_map=synthetic_root / "test_image_name_to_ids.json",
        progress=False,
    )
    with pytest.raises(
        CellDataError, match=r"test_image_name_to_ids.json: names 3 file\(s\) not in"
    ):
        run_prediction(run, _cfg(), None)


def test_slides_go_to_the_ranks_with_num_gpus(tmp_path: Path, monkeypatch) -> None:
    from cellseg_d2.inference import predict_run

    svs = _slide("small.svs")
    calls = []

    def ranks(cfg, tta, slides, output_dir, **kwargs):
        calls.append((slides, output_dir, kwargs))
        return []

    monkeypatch.setattr(predict_run, "distributed_slides", ranks)
    monkeypatch.setattr(predict_run, "CellPredictor", None)  # never built in this process
    run = PredictionRun(
        source=svs, formats=("geojson",), output_dir=tmp_path / "o", progress=False, num_gpus=2,
        resume=True, dist_url="tcp://127.0.0.1:1234",
    )  # fmt: skip
    assert run_prediction(run, _cfg(), None).slides == []
    ((slides, output_dir, kwargs),) = calls
    assert slides == [svs] and output_dir == tmp_path / "o"
    assert kwargs["num_gpus"] == 2 and kwargs["resume"] and kwargs["formats"] == ["geojson"]
    assert kwargs["dist_url"] == "tcp://127.0.0.1:1234"
