"""The label pyramid of a slide: exact pixels at level 0 (holes, pieces, tile seams, overlaps),
nearest-neighbour levels, OME metadata, tile by tile memory, atomic writes, and the slide loop
writing it only when asked."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage import draw

from cellseg_d2.errors import CellDataError
from cellseg_d2.inference import slide_labels
from cellseg_d2.inference.cell_store import CellStore
from cellseg_d2.inference.outlines import mask_to_polygons
from cellseg_d2.inference.slide_labels import (
    LABEL_CHANNELS,
    label_level_shapes,
    write_slide_labels,
)
from cellseg_d2.inference.slide_predict import predict_slide, slide_output_paths
from cellseg_d2.inference.slide_stitch import SlideCell
from tests.inference.slide_fakes import DiscPredictor, FakeSlideReader, make_canvas, slide_cell

HEIGHT, WIDTH, TILE = 70, 90, 16


def _mask_cell(mask: np.ndarray, category: int, score: float = 0.8) -> SlideCell:
    """A cell as the stitcher stores it (outline along the pixel edges) from a canvas mask."""
    rows, cols = np.nonzero(mask)
    top, left, bottom, right = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
    pieces = mask_to_polygons(mask[top:bottom, left:right], int(top), int(left))
    geometry = (
        {"type": "Polygon", "coordinates": pieces[0]}
        if len(pieces) == 1
        else {"type": "MultiPolygon", "coordinates": pieces}
    )
    return SlideCell(
        tile=0,
        category=category,
        score=score,
        box=(float(left), float(top), float(right), float(bottom)),
        area=float(mask.sum()),
        centroid_x=float(cols.mean() + 0.5),
        centroid_y=float(rows.mean() + 0.5),
        perimeter=1.0,
        eccentricity=0.0,
        solidity=1.0,
        mean_rgb=(0.0, 0.0, 0.0),
        geometry=json.dumps(geometry, separators=(",", ":")),
    )


def _known_masks() -> list[np.ndarray]:
    """Cells in id order: a ring with an island (MultiPolygon with a hole) across the tile
    seams at x 16, 32 and y 16, 32; pieces touching at a corner; a cell overlapping the ring;
    a cell on the slide's last row and column; random blobs."""
    masks = []
    ring = np.zeros((HEIGHT, WIDTH), bool)
    rr, cc = draw.disk((24, 24), 13, shape=ring.shape)
    ring[rr, cc] = True
    rr, cc = draw.disk((24, 24), 6, shape=ring.shape)
    ring[rr, cc] = False
    ring[23:26, 23:26] = True  # island in the hole: same cell
    masks.append(ring)
    corner = np.zeros_like(ring)
    corner[50:54, 5:9] = corner[54:57, 9:12] = True  # touch at one corner only
    masks.append(corner)
    overlap = np.zeros_like(ring)
    overlap[30:45, 30:45] = True  # overlaps the ring: the ring (lower id) keeps its pixels
    masks.append(overlap)
    edge = np.zeros_like(ring)
    edge[60:, 80:] = True
    masks.append(edge)
    rng = np.random.default_rng(3)
    for _ in range(4):
        blob = np.zeros_like(ring)
        y, x = rng.integers(5, HEIGHT - 12), rng.integers(45, WIDTH - 12)
        blob[y : y + 10, x : x + 10] = rng.random((10, 10)) < 0.6
        if blob.any():
            masks.append(blob)
    return masks


def _expected(masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Instance and class canvases painted in id order, first cell wins."""
    ids = np.zeros((HEIGHT, WIDTH), np.uint32)
    classes = np.zeros_like(ids)
    for cell_id, mask in enumerate(masks, start=1):
        free = mask & (ids == 0)
        ids[free] = cell_id
        classes[free] = cell_id % 3 + 1  # category cell_id % 3, 1-based
    return ids, classes


def _store(tmp_path: Path, cells, pixel_size_um: float | None = 0.5, **settings) -> CellStore:
    path = tmp_path / "s.cells.sqlite"
    meta = {"slide": "s.svs", "width": WIDTH, "height": HEIGHT, "offset": [0, 0]}
    meta.update(pixel_size_um=pixel_size_um, **settings)
    with CellStore.create(path, meta) as store:
        store.write_chunk(0, [0], cells[:3])
        store.write_chunk(1, [1], cells[3:])
        store.finish()
    return CellStore.open(path)


def _levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


def test_levels_are_exact_and_the_file_is_a_tiled_ome_pyramid(tmp_path: Path) -> None:
    masks = _known_masks()
    assert len(mask_to_polygons(masks[0])) == 2  # the ring and its island: a MultiPolygon
    cells = [_mask_cell(m, category=i % 3) for i, m in enumerate(masks, start=1)]
    out = tmp_path / "s.labels.ome.tif"
    with _store(tmp_path, cells) as store:
        assert write_slide_labels(store, out, tile_size=TILE) == out
    ids, classes = _expected(masks)
    levels = _levels(out)
    shapes = [(70, 90), (35, 45), (18, 23), (9, 12)]
    assert label_level_shapes(WIDTH, HEIGHT, TILE) == shapes
    assert [level.shape for level in levels] == [(2, *shape) for shape in shapes]
    assert levels[0].dtype == np.uint32
    np.testing.assert_array_equal(levels[0][0], ids)
    np.testing.assert_array_equal(levels[0][1], classes)
    assert (levels[0][0][24, 24], levels[0][0][24, 20]) == (1, 0)  # island kept, hole empty
    for k, level in enumerate(levels[1:], start=1):
        step = 2**k
        padded = np.pad(np.stack([ids, classes]), ((0, 0), (0, step), (0, step)))
        sampled = padded[:, step // 2 :: step, step // 2 :: step]
        np.testing.assert_array_equal(level, sampled[:, : shapes[k][0], : shapes[k][1]])
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff and tif.is_ome
        pages = [tif.series[0].levels[k].keyframe for k in range(len(shapes))]
        assert all(p.is_tiled and (p.tilelength, p.tilewidth) == (TILE, TILE) for p in pages)
        assert {p.compression for p in pages} == {tifffile.COMPRESSION.ADOBE_DEFLATE}
        assert [p.tags["XResolution"].value for p in pages] == [
            (round(1e4 / (0.5 * 2**k)), 1) for k in range(len(shapes))
        ]
        xml = tif.ome_metadata
    assert 'PhysicalSizeX="0.5"' in xml and 'PhysicalSizeYUnit="µm"' in xml
    assert all(f'Name="{name}"' in xml for name in LABEL_CHANNELS)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_sub_pixel_vertices_fill_the_pixels_whose_centre_is_inside(tmp_path: Path) -> None:
    # a model at another scale stores fractional vertices: centres 2.5 .. 5.5 are inside
    cell = slide_cell(2.3, 10.2, size=3.4)
    with _store(tmp_path, [cell], pixel_size_um=None) as store:
        write_slide_labels(store, tmp_path / "f.labels.ome.tif", tile_size=TILE)
    level0, level1 = _levels(tmp_path / "f.labels.ome.tif")[:2]
    rows, cols = np.nonzero(level0[0])
    assert (sorted(set(cols)), sorted(set(rows))) == ([2, 3, 4, 5], [10, 11, 12, 13])
    # level 1 samples level-0 centres 2c + 1.5: x 3.5 and 5.5, y 11.5 and 13.5
    rows, cols = np.nonzero(level1[0])
    assert (sorted(set(cols)), sorted(set(rows))) == ([1, 2], [5, 6])
    with tifffile.TiffFile(tmp_path / "f.labels.ome.tif") as tif:
        assert "PhysicalSizeX" not in tif.ome_metadata


def test_tile_by_tile_never_the_canvas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 4096 x 3072: the canvas would be 48 MiB per channel; one 256 px tile is 256 KiB
    width, height, tile = 4096, 3072, 256
    cells = [slide_cell(x, y, category=x % 2, size=40) for x in range(0, 4000, 700)
             for y in range(100, 3000, 900)]  # fmt: skip
    path = tmp_path / "big.cells.sqlite"
    with CellStore.create(path, {"width": width, "height": height}) as store:
        store.write_chunk(0, [0], cells)
        store.finish()
    shapes: list[tuple[int, ...]] = []
    paint = slide_labels._paint_tile

    def recording(*args, **kwargs):
        tile_array = paint(*args, **kwargs)
        shapes.append(tile_array.shape)
        return tile_array

    monkeypatch.setattr(slide_labels, "_paint_tile", recording)
    with CellStore.open(path) as store:
        tracemalloc.start()
        try:
            write_slide_labels(store, tmp_path / "big.labels.ome.tif", tile_size=tile)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # every tile of every level (4096 x 3072 down to 256 x 192), both channels
    expected_tiles = 2 * sum(
        -(-h // tile) * -(-w // tile) for h, w in label_level_shapes(width, height, tile)
    )
    assert len(shapes) == expected_tiles
    assert all(h <= tile and w <= tile for h, w in shapes)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB: a canvas was allocated"
    level0 = tifffile.imread(tmp_path / "big.labels.ome.tif", series=0, level=0)
    assert level0.shape == (2, height, width)
    assert set(np.unique(level0[0])) == set(range(len(cells) + 1))


def test_failed_write_keeps_the_old_file_and_bad_input_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "s.labels.ome.tif"
    out.write_bytes(b"old")
    calls = []

    def failing(*args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return np.zeros((TILE, TILE), np.uint32)

    monkeypatch.setattr(slide_labels, "_paint_tile", failing)
    with _store(tmp_path, [slide_cell(1, 1)]) as store:
        with pytest.raises(RuntimeError, match="disk full"):
            write_slide_labels(store, out, tile_size=TILE)
        with pytest.raises(ValueError, match="multiple of 16"):
            write_slide_labels(store, out, tile_size=100)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.cells.sqlite", "s.labels.ome.tif"]
    path = tmp_path / "n.cells.sqlite"
    with CellStore.create(path, {"slide": "n.svs"}) as store:
        store.finish()
    with CellStore.open(path) as store, pytest.raises(CellDataError, match="n.cells.sqlite"):
        write_slide_labels(store, tmp_path / "n.labels.ome.tif")


def test_slides_write_labels_only_when_asked_also_on_resume(tmp_path: Path) -> None:
    canvas, discs = make_canvas(count=30)

    def run(formats: tuple[str, ...] | None, resume: bool = False) -> tuple:
        options = {} if formats is None else {"formats": formats}
        predictor = DiscPredictor()
        summary = predict_slide(
            tmp_path / "slide.svs",
            lambda path: FakeSlideReader(path, canvas, 0.5),
            predictor,
            tmp_path / "out",
            model_pixel_size=None, tile_size=64, overlap=16, batch_size=2, num_workers=0,
            tissue="none", resume=resume, chunk_tiles=3, progress=False, **options,
        )  # fmt: skip
        return summary, predictor

    paths = slide_output_paths(tmp_path / "out", "slide.svs")
    assert paths["labels"] == tmp_path / "out" / "slide.labels.ome.tif"
    summary, _ = run(None)  # the default: GeoJSON and CSV only
    assert set(summary.outputs) == {"geojson", "csv"} and not paths["labels"].exists()
    summary, predictor = run(("geojson", "csv", "labels"), resume=True)  # the finished store
    assert predictor.calls == 0 and summary.outputs["labels"] == paths["labels"]
    ids = _levels(paths["labels"])[0]
    with open(paths["csv"], newline="") as handle:
        classes = {int(r["cell_id"]): int(r["class_id"]) for r in csv.DictReader(handle)}
    assert ids.shape == (2, *canvas.shape[:2]) and len(classes) == len(discs)
    for disc in discs:
        x0, y0, x1, y1 = disc.box
        rr, cc = draw.disk((disc.cy, disc.cx), 5.5, shape=canvas.shape[:2])
        (cell_id,) = set(ids[0][rr, cc].tolist())  # one label covers the disc
        assert cell_id > 0 and (ids[0][y0:y1, x0:x1] == cell_id).sum() == disc.area
        assert classes[cell_id] == disc.category + 1 and set(ids[1][rr, cc]) == {classes[cell_id]}
    assert int((ids[0] > 0).sum()) == sum(d.area for d in discs)
