"""Reading submissions with bounded memory (cellseg_d2.evaluation.submission_read)."""

from __future__ import annotations

import json
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from cellseg_d2.data.limits import (
    MAX_DETECTIONS_ENV,
    MAX_SUBMISSION_MB_ENV,
    MIN_SUBMISSION_BYTES_PER_VALUE,
    VALUES_PER_ENTRY,
    max_submission_entries,
)
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.submission import write_submission
from cellseg_d2.evaluation.submission_read import RESULTS_FILE_NAME, read_submission
from tests.conftest import REPO_ROOT, load_tool

EVALUATE = REPO_ROOT / "tools" / "evaluate_submission.py"
VALIDATE = REPO_ROOT / "tools" / "validate_submission.py"


def _zeros(path: Path, count: int) -> Path:
    """The issue's submission: a flat list of ``count`` zeros (2 bytes each)."""
    path.write_bytes(b"[" + b"0," * (count - 1) + b"0]")
    return path


def _tool_args(tool: Path, root: Path, pred: Path, tmp_path: Path) -> list[str]:
    args = ["--id-map", str(root / "test_image_name_to_ids.json"), "--pred", str(pred)]
    if tool == EVALUATE:
        args += ["--gt", str(root / "test_gt"), "--json", str(tmp_path / "scores.json")]
    return args


@pytest.mark.parametrize("tool", [VALIDATE, EVALUATE])
def test_a_list_of_zeros_is_refused_before_parsing(
    dataset: tuple[Path, list[dict], list[dict]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    tool: Path,
) -> None:
    """The issue's file: one value per 2 bytes, far denser than any submission."""
    root, _, _ = dataset
    pred = _zeros(tmp_path / "zeros.json", 10_000)
    assert load_tool(tool).main(_tool_args(tool, root, pred, tmp_path)) == 2
    err = capsys.readouterr().err
    allowed = 20_001 // MIN_SUBMISSION_BYTES_PER_VALUE + 16
    assert f"{pred}: holds up to 10001 JSON values, more than the {allowed} allowed" in err
    assert "refused before parsing" in err and "Traceback" not in err
    assert not (tmp_path / "scores.json").exists()


@pytest.mark.parametrize("tool", [VALIDATE, EVALUATE])
def test_more_values_than_the_id_map_allows_are_refused_before_parsing(
    dataset: tuple[Path, list[dict], list[dict]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tool: Path,
) -> None:
    """Values spaced out enough to pass the density check, but more than the id map allows."""
    root, entries, _ = dataset
    monkeypatch.setenv(MAX_DETECTIONS_ENV, "10")
    allowed = max_submission_entries(entries)  # 3 images: ~300 by their pixels
    count = allowed * VALUES_PER_ENTRY  # with the list itself: one value too many
    pred = tmp_path / "spaced.json"
    pred.write_bytes(b"[" + b"0,   " * (count - 1) + b"0]")
    assert load_tool(tool).main(_tool_args(tool, root, pred, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"{pred}: holds up to {count + 1} JSON values" in err
    assert f"at most {allowed} detections on the 3 images" in err and MAX_DETECTIONS_ENV in err
    assert "refused before parsing" in err and "Traceback" not in err
    assert not (tmp_path / "scores.json").exists()


@pytest.mark.parametrize("tool", [VALIDATE, EVALUATE])
def test_too_many_detections_are_refused_before_checking(
    dataset: tuple[Path, list[dict], list[dict]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tool: Path,
) -> None:
    """Few values each, so they parse; too many entries, so none is checked (no messages)."""
    root, entries, results = dataset
    allowed = max_submission_entries(entries)
    pred = tmp_path / "many.json"
    write_submission(results[:1] * (allowed + 1), pred, zip_output=False)
    assert load_tool(tool).main(_tool_args(tool, root, pred, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"{pred}: {allowed + 1} detections, more than the {allowed} allowed" in err
    assert "violation" not in err and "Traceback" not in err
    monkeypatch.setenv(MAX_DETECTIONS_ENV, str(allowed))  # the advice works
    assert len(read_submission(pred, entries)) == allowed + 1


def test_valid_submissions_pass_and_zips_are_bounded_too(
    dataset: tuple[Path, list[dict], list[dict]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, entries, results = dataset
    pred = tmp_path / "sub.zip"
    write_submission(results, pred, zip_output=True)
    assert read_submission(pred, entries) == json.loads(json.dumps(results))
    assert read_submission(pred) == read_submission(pred, entries)
    monkeypatch.setenv(MAX_DETECTIONS_ENV, "10")
    zeros = tmp_path / "zeros.zip"
    with zipfile.ZipFile(zeros, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(RESULTS_FILE_NAME, b"[" + b"0," * 100_000 + b"0]")
    with pytest.raises(CellDataError) as error:
        read_submission(zeros, entries)
    assert str(error.value).startswith(f"{zeros}: member {RESULTS_FILE_NAME}: holds up to")
    with pytest.raises(CellDataError, match="one per 4 bytes"):
        read_submission(zeros)  # the density bound holds without the id map too
    spaced = tmp_path / "spaced.zip"
    with zipfile.ZipFile(spaced, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(RESULTS_FILE_NAME, b"[" + b"0,   " * 100_000 + b"0]")
    assert len(read_submission(spaced)) == 100_001  # without the id map: dense enough to read
    with pytest.raises(CellDataError, match="detections on the 3 images"):
        read_submission(spaced, entries)


def test_memory_of_a_refused_list_of_zeros_stays_near_its_size(
    dataset: tuple[Path, list[dict], list[dict]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """Issue 16: parsing and checking ``[0,0,...]`` cost ~100 bytes per byte; now ~1."""
    root, entries, _ = dataset
    pred = _zeros(tmp_path / "zeros.json", 1_000_000)  # 2 MB
    size = pred.stat().st_size
    tracemalloc.start()
    try:
        assert load_tool(VALIDATE).main(_tool_args(VALIDATE, root, pred, tmp_path)) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "JSON values" in capsys.readouterr().err
    assert peak < 3 * size, f"peak {peak} bytes for a {size}-byte file"


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    not_json = tmp_path / "a.json"
    not_json.write_text("[{")
    not_list = tmp_path / "b.json"
    not_list.write_text('{"image_id": 1}')
    wrong_zip = tmp_path / "c.zip"
    with zipfile.ZipFile(wrong_zip, "w") as archive:
        archive.writestr("results.json", "[]")
    for path in (not_json, not_list, wrong_zip, tmp_path / "missing.json"):
        with pytest.raises(CellDataError, match=path.name):
            read_submission(path)


def test_zip_member_size_is_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(RESULTS_FILE_NAME, "[" + " " * (3 * 2**20) + "]")
    assert bomb.stat().st_size < 20_000
    assert read_submission(bomb) == []  # under the default limit
    monkeypatch.setenv(MAX_SUBMISSION_MB_ENV, "1")
    with pytest.raises(CellDataError) as error:
        read_submission(bomb)
    for part in ("bomb.zip", RESULTS_FILE_NAME, "1 MiB", MAX_SUBMISSION_MB_ENV):
        assert part in str(error.value)
    # A header that understates the size: the read stops at the cap (Python's zipfile stops at
    # the header's size and then fails the CRC), a clear error either way, no traceback.
    lying = tmp_path / "lying.zip"
    data = bomb.read_bytes()
    info = zipfile.ZipFile(bomb).getinfo(RESULTS_FILE_NAME)
    real = info.file_size.to_bytes(4, "little")
    assert data.count(real) == 2  # local header and central directory
    lying.write_bytes(data.replace(real, (100).to_bytes(4, "little")))
    with pytest.raises(CellDataError, match="lying.zip"):
        read_submission(lying)
    plain = tmp_path / "big.json"
    plain.write_text("[" + " " * (2 * 2**20) + "]")
    with pytest.raises(CellDataError, match="big.json.*1 MiB"):
        read_submission(plain)
    monkeypatch.setenv(MAX_SUBMISSION_MB_ENV, "lots")
    with pytest.raises(CellDataError, match=MAX_SUBMISSION_MB_ENV):
        read_submission(plain)


def test_hostile_json_ends_in_a_clear_error(tmp_path: Path) -> None:
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CellDataError, match="nested.json: holds up to 100001 JSON values"):
        read_submission(nested)  # one value per 2 bytes: refused before parsing (issue 16)
    nested.write_text("[" * 100_000 + " " * 300_000 + "]" * 100_000)  # sparse enough to parse
    with pytest.raises(CellDataError, match="nested.json.*nested too deeply"):
        read_submission(nested)
    huge = tmp_path / "huge.json"
    huge.write_text('[{"image_id": ' + "9" * 5000 + "}]")
    with pytest.raises(CellDataError, match="huge.json.*5000 digits"):
        read_submission(huge)
