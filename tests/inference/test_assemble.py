"""Assembly: shards checked as they are read, outputs read back before they replace anything."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cellseg_d2.inference.assemble as assemble_module
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.assemble import assemble_outputs, iter_json_list
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.outputs import staging_path
from cellseg_d2.inference.predictor import detections_to_results
from cellseg_d2.inference.shards import PredictionShards

ENTRIES = [{"file_name": f"im{i}.tif", "id": 10 + i, "height": 16, "width": 24} for i in range(3)]


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_iter_json_list_reads_items_across_buffer_ends(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(assemble_module, "_CHUNK_CHARS", chunk)
    items = [{"a": [1, 2.5, "x,]"]}, 12345, [], "s", {"b": {}}, -7e3]
    text = " [ " + " , ".join(json.dumps(item) for item in items) + " ]\n"
    assert list(iter_json_list(io.StringIO(text), "f")) == items
    assert list(iter_json_list(io.StringIO("[]"), "f")) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{}", "not a JSON list"),
        ("", "not a JSON list"),
        ("[1, 2", "malformed"),
        ("[1 2]", "malformed JSON list after item"),
        ("[1,]", "malformed JSON"),
        ("[1] [2]", "data after the end"),
    ],
)
def test_iter_json_list_refuses_malformed(
    monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.setattr(assemble_module, "_CHUNK_CHARS", 2)
    with pytest.raises(CellDataError, match=f"^f: {message}"):
        list(iter_json_list(io.StringIO(text), "f"))


def test_iter_json_list_bounds_one_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assemble_module, "MAX_RESULT_CHARS", 100)
    monkeypatch.setattr(assemble_module, "_CHUNK_CHARS", 16)
    with pytest.raises(CellDataError, match="longer than 100"):
        list(iter_json_list(io.StringIO('[{"a": "' + "x" * 1000 + '"}]'), "f"))


def _shards(tmp_path: Path) -> PredictionShards:
    """A work folder holding the three images' shards (2, 0 and 1 detections)."""
    shards = PredictionShards(tmp_path / "sub.json.partial", {"run": "x"}, resume=False)
    square = np.ones((4, 5), bool)
    for entry, count in zip(ENTRIES, (2, 0, 1)):
        dets = [Detection(k % 4, 0.5, k, k, square) for k in range(count)]
        results = detections_to_results(dets, entry["id"], entry["height"], entry["width"])
        rows = "".join(
            f"{entry['file_name']},{entry['id']},{k + 1},1,a,0.5,20,2,2,0,0,5,4,14,0.6,1,1,2,3,"
            "label image\n"
            for k in range(count)
        )
        shards.add(entry["id"], json.dumps(results), rows)
    return shards


@pytest.mark.parametrize("zip_output", [False, True])
def test_assemble_writes_every_shard_in_order(tmp_path: Path, zip_output: bool) -> None:
    shards = _shards(tmp_path)
    output = tmp_path / ("sub.zip" if zip_output else "sub.json")
    export = tmp_path / "export"
    assemble_outputs(shards, ENTRIES, ["coco", "csv"], 4, output, zip_output, export)
    if zip_output:
        with zipfile.ZipFile(output) as archive:
            results = json.loads(archive.read("test-results.json"))
    else:
        results = json.loads(output.read_text())
    assert [r["image_id"] for r in results] == [10, 10, 12]
    rows = (export / "cells.csv").read_text().splitlines()
    assert rows[0].startswith("image,image_id,") and len(rows) == 4
    assert not staging_path(output).exists() and not staging_path(export / "cells.csv").exists()


def test_bad_shard_at_assembly_stops_and_keeps_the_earlier_output(tmp_path: Path) -> None:
    shards = _shards(tmp_path)
    output = tmp_path / "sub.json"
    output.write_text("earlier")
    bad = shards.path(12, ".json")
    bad.write_text(json.dumps([{**json.loads(bad.read_text())[0], "image_id": 10}]))
    with pytest.raises(CellDataError, match=rf"{bad}: result 0: image_id 10 is not this"):
        assemble_outputs(shards, ENTRIES, ["coco"], 4, output, False, None)
    assert output.read_text() == "earlier"
    assert not bad.exists(), "removed, so that --resume predicts the image again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.json", "sub.json.partial"]


def test_assembled_output_that_differs_from_the_shards_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = _shards(tmp_path)
    output = tmp_path / "sub.json"
    output.write_text("earlier")

    def dropping_writer(parts, path, zip_output) -> None:  # loses the last image's results
        texts = list(parts)
        path.write_text("[" + ",".join(t[1:-1] for t in texts[:-1] if t != "[]") + "]")

    monkeypatch.setattr(assemble_module, "write_submission_parts", dropping_writer)
    with pytest.raises(CellDataError, match=r"holds 2 entries on 1 images where the shards hold 3"):
        assemble_outputs(shards, ENTRIES, ["coco"], 4, output, False, None)
    assert output.read_text() == "earlier" and not staging_path(output).exists()
