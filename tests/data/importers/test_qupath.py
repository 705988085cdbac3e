"""QuPath GeoJSON import: holes, MultiPolygons, repairs, unclassified objects, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from shapely.geometry import MultiPolygon, Polygon

from cellseg_d2.data.importers import ImportOptions, import_dataset
from cellseg_d2.errors import CellDataError
from tests.importer_helpers import (
    dataset_info,
    match_cells,
    no_leftovers,
    prepare,
    rasterise,
    read_cells,
    star_polygon,
)

H, W = 80, 96


def _ring(points: list[tuple[float, float]]) -> list[list[float]]:
    """A closed GeoJSON ring."""
    return [list(p) for p in points] + [list(points[0])]


def _feature(geometry: dict, name: str | None, object_type: str = "annotation") -> dict:
    properties: dict = {"objectType": object_type}
    if name is not None:
        properties["classification"] = {"name": name, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _build(folder: Path, as_list: bool = False) -> tuple[Path, list[tuple[str, shapely.Geometry]]]:
    """An image (TIFF with a pixel size of 0.25 um in cm resolution tags) and its GeoJSON:
    a polygon with a hole, a MultiPolygon, an unclassified polygon, a bow-tie, a point and a
    tile. Returns the GeoJSON and the expected (class, geometry) of the area objects."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    tifffile.imwrite(
        folder / "slide_crop.tif",
        pixels,
        photometric="rgb",
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    outer = star_polygon(rng, 24, 24, 15, points=16)
    hole = star_polygon(rng, 24, 24, 5, points=8)
    parts = [star_polygon(rng, 64, 18, 9), star_polygon(rng, 80, 40, 8)]
    plain = star_polygon(rng, 24, 60, 10)
    bowtie = [(50.2, 50.3), (70.6, 70.1), (70.4, 50.2), (50.1, 70.7)]
    features = [
        _feature({"type": "Polygon", "coordinates": [_ring(outer), _ring(hole)]}, "Tumor"),
        _feature(
            {"type": "MultiPolygon", "coordinates": [[_ring(p)] for p in parts]},
            "Immune",
            "detection",
        ),
        _feature({"type": "Polygon", "coordinates": [_ring(plain)]}, None),
        _feature({"type": "Polygon", "coordinates": [_ring(bowtie)]}, "Tumor"),
        _feature({"type": "Point", "coordinates": [5, 5]}, "Tumor"),
        _feature(
            {"type": "Polygon", "coordinates": [_ring([(0, 0), (9, 0), (9, 9)])]}, None, "tile"
        ),
    ]
    expected = [
        ("Tumor", Polygon(outer, [hole])),
        ("Immune", MultiPolygon([Polygon(p) for p in parts])),
        (None, Polygon(plain)),
        ("Tumor", shapely.make_valid(Polygon(bowtie))),
    ]
    data = features if as_list else {"type": "FeatureCollection", "features": features}
    path = folder / "slide_crop.tif.geojson"  # QuPath names its export after the image file
    path.write_text(json.dumps(data))
    return path, expected


def _expected_cells(expected: list, names: list[str], unclassified: str | None) -> list:
    cells = []
    for name, geometry in expected:
        name = unclassified if name is None else name
        if name is not None:
            cells.append((names.index(name), rasterise(geometry, H, W)))
    return cells


@pytest.mark.parametrize("as_list", [False, True])
def test_qupath_round_trip(tmp_path: Path, as_list: bool) -> None:
    source, expected = _build(tmp_path / "src", as_list)
    root = tmp_path / "out"
    options = ImportOptions(unclassified="other")
    summary = import_dataset("qupath", source.parent, root, options)
    info = dataset_info(root)
    # Collected names are sorted; the unclassified class comes last.
    assert info == {
        "class_names": ["Immune", "Tumor", "other"],
        "pixel_size_um": pytest.approx(0.25),
        "source_format": "qupath",
    }
    assert summary.cells == {"Immune": 1, "Tumor": 2, "other": 1}
    assert summary.repaired == 1
    assert summary.skipped == {
        "a QuPath tile, not a cell": 1,
        "geometry type Point is not an area": 1,
    }
    found = read_cells(root / "train" / "slide_crop")
    cells = _expected_cells(expected, info["class_names"], "other")
    scores = match_cells(cells, found)
    assert min(scores) > 0.99, scores
    # The hole is empty and both MultiPolygon parts are one cell.
    ring = next(m for c, m in found if c == 1 and m[24, 16])
    assert not ring[24, 24]
    immune = [m for c, m in found if c == 0]
    assert len(immune) == 1 and immune[0][18, 64] and immune[0][40, 80]
    assert prepare(root) == {"Immune": 1, "Tumor": 2, "other": 1}


def test_qupath_unclassified_rules(tmp_path: Path) -> None:
    source, expected = _build(tmp_path / "src")
    with pytest.raises(CellDataError, match=r"slide_crop.tif.geojson: feature 2: object without"):
        import_dataset("qupath", source, tmp_path / "out")
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path / "out")
    options = ImportOptions(class_names=("Tumor", "Immune"), skip_unclassified=True)
    summary = import_dataset("qupath", source, tmp_path / "out", options)
    assert summary.cells == {"Tumor": 2, "Immune": 1}
    assert summary.skipped["no class"] == 1
    scores = match_cells(
        _expected_cells(expected, ["Tumor", "Immune"], None),
        read_cells(tmp_path / "out" / "train" / "slide_crop"),
    )
    assert min(scores) > 0.99


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        ({"type": "Polygon", "coordinates": [[[1, 1], [5, 5], [1, 1]]]}, "2 distinct point"),
        (
            {"type": "Polygon", "coordinates": [_ring([(200, 200), (220, 200), (220, 230)])]},
            "lies outside the 96x80 px image",
        ),
        ({"type": "Polygon", "coordinates": [[[1, "a"], [5, 5], [1, 9]]]}, "bad position"),
    ],
)
def test_qupath_refuses_bad_objects(tmp_path: Path, geometry: dict, message: str) -> None:
    source, _ = _build(tmp_path / "src")
    data = json.loads(source.read_text())
    data["features"].insert(1, _feature(geometry, "Tumor"))
    source.write_text(json.dumps(data))
    with pytest.raises(CellDataError, match=f"feature 1: .*{message}"):
        import_dataset("qupath", source, tmp_path / "out", ImportOptions(unclassified="x"))
    assert no_leftovers(tmp_path / "out")


def test_qupath_nucleus_geometry_and_missing_image(tmp_path: Path) -> None:
    source, _ = _build(tmp_path / "src")
    cell = _feature({"type": "Polygon", "coordinates": [_ring([(2, 2), (30, 2), (30, 30)])]}, "C")
    cell["nucleusGeometry"] = {"type": "Polygon", "coordinates": [_ring([(5, 5), (9, 5), (9, 9)])]}
    cell["properties"]["objectType"] = "cell"
    source.write_text(json.dumps([cell]))
    for nucleus in (False, True):
        root = tmp_path / f"out{nucleus}"
        import_dataset("qupath", source, root, nucleus=nucleus)
        ((_, mask),) = read_cells(root / "train" / "slide_crop")
        expected = [(2, 2), (30, 2), (30, 30)] if nucleus is False else [(5, 5), (9, 5), (9, 9)]
        assert np.array_equal(mask, rasterise(Polygon(expected), H, W))
    (tmp_path / "src" / "slide_crop.tif").rename(tmp_path / "src" / "other.tif")
    with pytest.raises(CellDataError, match="no image named 'slide_crop.tif'"):
        import_dataset("qupath", source, tmp_path / "out3")


def test_island_inside_a_hole_of_the_same_cell_is_kept() -> None:
    """A valid MultiPolygon whose second part sits in the first part's hole (the pixel-edge
    outline of a ring-shaped cell with a pixel of its own in the middle) fills both parts."""
    from shapely.geometry import MultiPolygon, Polygon

    from cellseg_d2.data.importers.qupath import geometry_to_mask

    ring = Polygon([(0, 0), (5, 0), (5, 5), (0, 5)], [[(1, 1), (4, 1), (4, 4), (1, 4)]])
    island = Polygon([(2, 2), (3, 2), (3, 3), (2, 3)])
    top, left, mask = geometry_to_mask(MultiPolygon([ring, island]), 10, 10)
    expected = np.zeros(mask.shape, bool)  # the crop may reach one row/column past the box
    expected[:5, :5] = True
    expected[1:4, 1:4] = False
    expected[2, 2] = True
    assert (top, left) == (0, 0) and np.array_equal(mask, expected)
