"""predict_slides: the config's tiling and pixel size applied to real slide files, with a fake
predictor (one known cell in the middle of every tile) so the positions are exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellseg_d2.config import build_config
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference import predict_slides as predict_slides_module
from cellseg_d2.inference import slide_cells, slide_loader
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.predict_slides import (
    check_slide_formats,
    model_identity,
    predict_slides,
    slide_tile_factor,
    start_slide_worker_server,
)
from tests.conftest import INSTANT_CONFIG, SHARED_DATA

SLIDES = SHARED_DATA / "slides"


def _slide(name: str) -> Path:
    path = SLIDES / name
    if not path.is_file():
        pytest.skip(f"{path} absent (../shared/data/slides not beside the checkout)")
    return path


class CentreCell:
    """A fake predictor: one 8x8 cell of class 0 at the centre of every tile it is given."""

    batch_size = 2

    def __init__(self) -> None:
        self.tiles: list[tuple[int, int]] = []

    def __call__(self, images):
        out = []
        for image in images:
            height, width = image.shape[:2]
            self.tiles.append((height, width))
            mask = np.ones((8, 8), bool)
            out.append([Detection(0, 0.9, height // 2 - 4, width // 2 - 4, mask)])
        return out


def _cfg(*opts: object):
    return build_config(
        INSTANT_CONFIG,
        ["MODEL.DEVICE", "cpu", "TEST.TILING.TILE_SIZE", 512, "TEST.TILING.OVERLAP", 64,
         "DATALOADER.NUM_WORKERS", 0, *opts],
    )  # fmt: skip


def test_real_svs_cells_come_back_in_level0_pixels_at_the_model_scale(tmp_path: Path) -> None:
    svs = _slide("cmu-1-small-region.svs")  # 2220 x 2967 at 0.499 um/px
    fake = CentreCell()
    cfg = _cfg("INPUT.PIXEL_SIZE", 0.998)  # a model at half the resolution: tiles shrink 2x
    (summary,) = predict_slides(cfg, fake, [svs], tmp_path, tissue="none", progress=False)
    assert fake.tiles and all(shape == (512, 512) for shape in fake.tiles)
    features = json.loads((tmp_path / "cmu-1-small-region.geojson").read_text())["features"]
    assert len(features) == summary.cells == len(fake.tiles)  # one owned cell per tile
    for feature in features:
        ring = np.array(feature["geometry"]["coordinates"][0])
        # an 8x8 model-scale cell is 16x16 level-0 px, inside the slide
        assert ring[:, 0].max() - ring[:, 0].min() == pytest.approx(16, abs=1)
        assert 0 <= ring[:, 0].min() and ring[:, 0].max() <= 2220
        assert 0 <= ring[:, 1].min() and ring[:, 1].max() <= 2967
    rows = (tmp_path / "cmu-1-small-region.cells.csv").read_text().splitlines()
    assert len(rows) == 1 + summary.cells


def test_real_svs_labels_only_when_asked(tmp_path: Path) -> None:
    svs = _slide("cmu-1-small-region.svs")  # 2220 x 2967 at 0.499 um/px
    cfg = _cfg("INPUT.PIXEL_SIZE", 0.998)
    (summary,) = predict_slides(cfg, CentreCell(), [svs], tmp_path / "a", tissue="none",
                                progress=False)  # fmt: skip
    assert set(summary.outputs) == {"geojson", "csv"}
    (summary,) = predict_slides(cfg, CentreCell(), [svs], tmp_path / "b", tissue="none",
                                formats=["labels"], progress=False)  # fmt: skip
    labels = tmp_path / "b" / "cmu-1-small-region.labels.ome.tif"
    assert summary.outputs == {"labels": labels}
    with tifffile.TiffFile(labels) as tif:
        assert [level.shape for level in tif.series[0].levels] == [
            (2, 2967, 2220), (2, 1484, 1110), (2, 742, 555), (2, 371, 278)
        ]  # fmt: skip
        assert 'PhysicalSizeX="0.499"' in tif.ome_metadata
        ids = tif.series[0].levels[0].asarray()[0]
    assert set(np.unique(ids).tolist()) == set(range(summary.cells + 1))


def test_slide_without_pixel_size_needs_the_flag(tmp_path: Path) -> None:
    tcga = _slide("tcga-cr-7395-01a-01-ts1.svs")
    cfg = _cfg("INPUT.PIXEL_SIZE", 0.5)
    with pytest.raises(CellDataError, match=r"tcga-cr-7395.*--pixel-size"):
        predict_slides(cfg, CentreCell(), [tcga], tmp_path, progress=False)
    (summary,) = predict_slides(cfg, CentreCell(), [tcga], tmp_path, pixel_size=0.5, progress=False)
    assert summary.cells > 0


@pytest.mark.parametrize("name", ["unreadable.svs", "broken.svs", "unopenable.tiff"])
def test_corrupt_slides_name_the_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(CellDataError, match=name):
        predict_slides(_cfg(), CentreCell(), [_slide(name)], tmp_path, progress=False)


def test_slide_formats_and_model_identity(tmp_path: Path) -> None:
    assert check_slide_formats(["coco", "geojson"], [Path("a.svs")]) == ["geojson"]
    with pytest.raises(CellDataError, match=r"a.svs: whole slides are written as geojson, csv, "):
        check_slide_formats(["coco"], [Path("a.svs")])
    # labels means the tiled label pyramid for a slide: asked, so chosen
    assert check_slide_formats(["coco", "labels"], [Path("a.svs")]) == ["labels"]
    assert check_slide_formats(["coco"], []) == []
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"abc")
    identity = model_identity(_cfg("MODEL.WEIGHTS", str(weights)))
    assert identity == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(
    ("pixel_size", "scale", "factor"),
    [(0.25, 0.0, 1.0), (0.25, 2.0, 1.0), (0.0, 2.0, 2.0), (0.0, 0.0, 1.0)],
)
def test_slide_tiles_get_one_factor(pixel_size: float, scale: float, factor: float) -> None:
    """Read at the model's pixel size: no resize (the read includes INPUT.SCALE); read as
    scanned: INPUT.SCALE alone; never the short-edge resize (factor 1 when the scale is off)."""
    cfg = build_config(INSTANT_CONFIG, ["INPUT.PIXEL_SIZE", pixel_size, "INPUT.SCALE", scale])
    assert slide_tile_factor(cfg) == factor


def test_the_worker_server_starts_early_only_when_workers_are_used(monkeypatch) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(predict_slides_module, "start_worker_server", started.append)
    start_slide_worker_server(
        _cfg("DATALOADER.NUM_WORKERS", 0, "TEST.SLIDE_CELL_WORKERS", 0, "MODEL.DEVICE", "cpu")
    )
    assert started == []
    start_slide_worker_server(_cfg("DATALOADER.NUM_WORKERS", 2, "MODEL.DEVICE", "cpu"))
    assert started == [[slide_loader.__name__, slide_cells.__name__]]
