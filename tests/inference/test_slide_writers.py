"""GeoJSON and CSV streamed from a cell store: offset, classes, areas, one cell id across both."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from cellseg_d2.inference.cell_store import CellStore
from cellseg_d2.inference.slide_writers import (
    SLIDE_CSV_COLUMNS,
    write_slide_csv,
    write_slide_geojson,
    write_slide_text,
)
from cellseg_d2.utils.layout import class_color
from tests.inference.slide_fakes import slide_cell as _cell


def _store(tmp_path: Path, offset=(0, 0), pixel_size_um: float | None = 0.5) -> CellStore:
    path = tmp_path / "s.cells.sqlite"
    settings = {"slide": "s.svs", "offset": list(offset), "pixel_size_um": pixel_size_um}
    with CellStore.create(path, settings) as store:
        store.write_chunk(0, [0], [_cell(0, 0), _cell(10, 20, category=1)])
        store.write_chunk(1, [1], [_cell(30.5, 2, category=5)])
        store.finish()
    return CellStore.open(path)


@pytest.mark.parametrize("offset", [(0, 0), (100, 7)])
def test_geojson_and_csv_share_ids_and_coordinates(tmp_path: Path, offset) -> None:
    names = ["tumour", "=lymph"]
    with _store(tmp_path, offset) as store:
        assert write_slide_geojson(store, tmp_path / "s.geojson", names) == 3
        assert write_slide_csv(store, tmp_path / "s.csv", names, "=s.svs") == 3
    collection = json.loads((tmp_path / "s.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    props = [f["properties"] for f in features]
    assert {p["objectType"] for p in props} == {"detection"}
    assert [p["classification"]["name"] for p in props] == ["tumour", "=lymph", "class6"]
    assert props[2]["classification"]["color"] == list(class_color(5))
    assert [p["measurements"]["cell_id"] for p in props] == [1, 2, 3]
    assert props[0]["measurements"]["area_px"] == 16.0
    assert props[0]["measurements"]["area_um2"] == pytest.approx(4.0)
    ring = features[1]["geometry"]["coordinates"][0]
    assert ring[0] == [10 + offset[0], 20 + offset[1]]

    with open(tmp_path / "s.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == SLIDE_CSV_COLUMNS
    assert [int(r["cell_id"]) for r in rows] == [1, 2, 3]
    assert [r["class_id"] for r in rows] == ["1", "2", "6"]
    assert rows[1]["class_name"] == "'=lymph" and rows[0]["image"] == "'=s.svs"
    assert (rows[2]["bbox_x0"], rows[2]["bbox_y0"]) == (
        str(30.5 + offset[0]),
        str(2 + offset[1]),
    )
    assert float(rows[1]["centroid_x"]) == 10 + 1.5 + offset[0]
    assert rows[0]["area_px"] == "16" and float(rows[0]["area_um2"]) == pytest.approx(4.0)


def test_no_pixel_size_no_um2(tmp_path: Path) -> None:
    with _store(tmp_path, pixel_size_um=None) as store:
        write_slide_geojson(store, tmp_path / "s.geojson", [])
        write_slide_csv(store, tmp_path / "s.csv", [], "s.svs")
    features = json.loads((tmp_path / "s.geojson").read_text())["features"]
    assert all("area_um2" not in f["properties"]["measurements"] for f in features)
    with open(tmp_path / "s.csv", newline="") as handle:
        assert {r["area_um2"] for r in csv.DictReader(handle)} == {""}


def test_empty_store_writes_valid_files(tmp_path: Path) -> None:
    path = tmp_path / "e.cells.sqlite"
    with CellStore.create(path, {"offset": [0, 0]}) as store:
        store.finish()
    with CellStore.open(path) as store:
        assert write_slide_geojson(store, tmp_path / "e.geojson", []) == 0
        assert write_slide_csv(store, tmp_path / "e.csv", [], "e") == 0
    assert json.loads((tmp_path / "e.geojson").read_text())["features"] == []
    assert (tmp_path / "e.csv").read_text().strip() == ",".join(SLIDE_CSV_COLUMNS)


@pytest.mark.parametrize("pixel_size_um", [0.2501, None])
def test_features_are_the_bytes_json_writes_and_one_pass_writes_both(
    tmp_path: Path, pixel_size_um: float | None
) -> None:
    path = tmp_path / "f.cells.sqlite"
    awkward = [
        dataclasses.replace(_cell(0, 0), score=0.1 + 0.2, area=1e-05),
        dataclasses.replace(_cell(9, 9, category=3), score=1.0, area=123456789.125),
    ]
    with CellStore.create(path, {"offset": [0, 0], "pixel_size_um": pixel_size_um}) as store:
        store.write_chunk(0, [0], awkward)
        store.finish()
    b_geo, b_csv = tmp_path / "b.geojson", tmp_path / "b.csv"
    with CellStore.open(path) as store:
        assert write_slide_text(store, {"geojson": b_geo, "csv": b_csv}, ["x"], "s") == 2
        write_slide_geojson(store, tmp_path / "g.geojson", ["x"])
        write_slide_csv(store, tmp_path / "c.csv", ["x"], "s")
    text = (tmp_path / "b.geojson").read_text()
    assert text == (tmp_path / "g.geojson").read_text()
    assert (tmp_path / "b.csv").read_text() == (tmp_path / "c.csv").read_text()
    lines = text.splitlines()[1:-1]
    assert len(lines) == 2
    for line in lines:  # each feature is exactly json.dumps's compact text of itself
        feature = line.rstrip(",")
        assert json.dumps(json.loads(feature), separators=(",", ":")) == feature
    first = json.loads(lines[0].rstrip(","))["properties"]["measurements"]
    assert first["score"] == 0.1 + 0.2 and first["area_px"] == 1e-05
    assert ("area_um2" in first) == (pixel_size_um is not None)


def test_a_measurement_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n.cells.sqlite"
    with CellStore.create(path, {"offset": [0, 0]}) as store:
        store.write_chunk(0, [0], [dataclasses.replace(_cell(0, 0), score=float("inf"))])
        store.finish()
    with CellStore.open(path) as store, pytest.raises(ValueError, match="cell 1"):
        write_slide_geojson(store, tmp_path / "n.geojson", [])
    assert not (tmp_path / "n.geojson").exists()  # nothing half-written left behind
