"""The id map reader (cellseg_d2.data.id_map): names, bounds before reading and parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellseg_d2.data.id_map import file_name_problem, load_id_map
from cellseg_d2.data.limits import MAX_ID_MAP_MB_ENV
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.submission import write_submission
from tests.conftest import REPO_ROOT, SHARED_DATA, load_tool

EVALUATE = REPO_ROOT / "tools" / "evaluate_submission.py"
VALIDATE = REPO_ROOT / "tools" / "validate_submission.py"


@pytest.mark.parametrize("name", ["...tif", "..tif", "...tiff", "..TIF"])
def test_dot_stems_are_refused(name: str) -> None:
    assert "dot stem" in file_name_problem(name)


@pytest.mark.parametrize("name", ["a.tif", ".hidden.tif", "....tif", "a..tif", "x", "...."])
def test_ordinary_names_pass(name: str) -> None:
    assert file_name_problem(name) is None


@pytest.mark.parametrize("tool", [EVALUATE, VALIDATE])
def test_tools_refuse_a_dot_stem_before_reading_anything(
    dataset: tuple[Path, list[dict], list[dict]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    tool: Path,
) -> None:
    """``...tif`` has the stem ``..``: the scorer would read ``<gt>/../class1.tif``."""
    root, entries, results = dataset
    gt = tmp_path / "gt"
    (gt / Path(entries[0]["file_name"]).stem).mkdir(parents=True)
    outside = tmp_path / "class1.tif"  # what <gt>/../class1.tif names
    outside.write_bytes(b"not a mask")
    id_map = tmp_path / "ids.json"
    id_map.write_text(json.dumps([entries[0], {**entries[1], "file_name": "...tif"}]))
    pred = tmp_path / "submission.json"
    write_submission(results, pred, zip_output=False)
    before = pred.read_bytes()
    args = ["--id-map", str(id_map), "--pred", str(pred)]
    if tool == EVALUATE:
        args += ["--gt", str(gt), "--json", str(tmp_path / "scores.json")]
    assert load_tool(tool).main(args) == 2
    err = capsys.readouterr().err
    assert f"{id_map}: entry 1: file_name '...tif' has a dot stem" in err
    assert "Traceback" not in err
    assert pred.read_bytes() == before and not (tmp_path / "scores.json").exists()


def test_a_huge_id_map_is_refused_from_its_size(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as handle:
        handle.truncate(2 * 2**30)  # sparse: 2 GiB that would take seconds and 2 GiB to read
    pred = tmp_path / "pred.json"
    pred.write_text("[]")
    assert load_tool(VALIDATE).main(["--id-map", str(huge), "--pred", str(pred)]) == 2
    err = capsys.readouterr().err
    assert f"{huge}: {2 * 2**30} bytes is more than the 16 MiB an id map may hold" in err
    assert MAX_ID_MAP_MB_ENV in err
    small = tmp_path / "ids.json"
    small.write_text(json.dumps([{"file_name": "a.tif", "id": 1, "height": 9, "width": 9}] * 40))
    monkeypatch.setenv(MAX_ID_MAP_MB_ENV, "0.001")  # 1048 bytes, below its 2320
    with pytest.raises(CellDataError, match=r"ids.json: 2320 bytes is more than the 0.000999"):
        load_id_map(small)


def test_a_dense_id_map_is_refused_before_parsing(tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.json"
    zeros.write_bytes(b"[" + b"0," * 100_000 + b"0]")
    with pytest.raises(CellDataError) as error:
        load_id_map(zeros)
    message = str(error.value)
    assert message.startswith(f"{zeros}: holds up to 100002 JSON values, more than the 25016")
    assert "one per 8 bytes" in message and "refused before parsing" in message
    empties = tmp_path / "empties.json"
    empties.write_bytes(b"[" + b"{}," * 1000 + b"{}]")
    with pytest.raises(CellDataError, match="empties.json: holds up to 2003 JSON values"):
        load_id_map(empties)


def test_compact_and_real_id_maps_pass(tmp_path: Path) -> None:
    compact = tmp_path / "compact.json"
    entries = [{"file_name": f"{i}.tif", "id": i, "height": 9, "width": 9} for i in range(500)]
    compact.write_text(json.dumps(entries, separators=(",", ":")))
    assert load_id_map(compact) == entries
    real = sorted(SHARED_DATA.glob("*/test_image_name_to_ids.json"))
    if not real:
        pytest.skip(f"no shared data under {SHARED_DATA}")
    for path in real:
        assert len(load_id_map(path)) == len(json.loads(path.read_text()))
