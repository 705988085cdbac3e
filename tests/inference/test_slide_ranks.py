"""Slides on two CPU processes (gloo, detectron2's launch): the store and files one process
writes, every chunk once; a killed run resumes to the same output, predicting only what is left."""

from __future__ import annotations

import functools
import logging
import sqlite3
from pathlib import Path

import pytest

from cellseg_d2.inference.slide_plan import plan_slide
from cellseg_d2.inference.slide_predict import predict_slide
from cellseg_d2.inference.slide_ranks import predict_slides_on_ranks
from cellseg_d2.inference.slide_shards import shard_path, slide_work_dir
from tests.inference.slide_fakes import (
    DiscPredictor,
    make_canvas,
    open_npz_slide,
    rank_disc_predictor,
    save_slide,
)

PLAN = dict(model_pixel_size=None, tile_size=64, overlap=16, tissue="none", chunk_tiles=3)
FORMATS = ("geojson", "csv")
CLASSES = ("dark", "light")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The slide and what one process writes for it."""
    folder = tmp_path_factory.mktemp("slide")
    canvas, _ = make_canvas(seed=3)
    slide = save_slide(folder / "slide.svs", canvas)
    summary = predict_slide(slide, open_npz_slide, DiscPredictor(), folder / "one",
                            batch_size=1, num_workers=0, class_names=CLASSES, formats=FORMATS,
                            progress=False, **PLAN)  # fmt: skip
    assert summary.cells > 20
    return slide, _outputs(folder / "one")


def _outputs(folder: Path) -> dict:
    """The store's tables and the files' bytes (what must equal between runs)."""
    with sqlite3.connect(folder / "slide.cells.sqlite") as db:
        tables = {
            name: db.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall()
            for name in ("cells", "chunks", "meta")
        }
    files = {name: (folder / name).read_bytes() for name in ("slide.geojson", "slide.cells.csv")}
    left = sorted(p.name for p in folder.iterdir())
    return {"tables": tables, "files": files, "left": left}


def _ranks(slide: Path, out: Path, resume: bool = False, **predictor: int):
    return predict_slides_on_ranks(
        [slide],
        out,
        open_reader=open_npz_slide,
        make_predictor=functools.partial(rank_disc_predictor, **predictor),
        plan_options=PLAN,
        formats=FORMATS,
        class_names=CLASSES,
        resume=resume,
        progress=False,
        num_gpus=2,
    )


def test_two_processes_write_what_one_process_writes(one_process, tmp_path: Path) -> None:
    slide, expected = one_process
    (summary,) = _ranks(slide, tmp_path)
    assert _outputs(tmp_path) == expected  # incl. no work folder or report left
    chunks = expected["tables"]["chunks"]
    assert [row[0] for row in chunks] == list(range(len(chunks))) and len(chunks) > 4
    assert summary.predicted_tiles == summary.tissue_tiles and summary.resumed_tiles == 0


def test_killed_run_resumes_to_the_same_output(
    one_process, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slide, expected = one_process
    with pytest.raises(Exception, match="simulated crash"):
        _ranks(slide, tmp_path, fail_rank=1, fail_after=4)  # rank 1 dies in its second chunk
    plan = plan_slide(slide, open_npz_slide, tmp_path, formats=FORMATS, **PLAN)
    work = slide_work_dir(plan.paths["store"])
    done = {c for c in range(len(plan.chunks)) if shard_path(work, c).is_file()}
    assert 1 in done and 3 not in done  # rank 1 finished chunk 1 and died in chunk 3
    shard_path(work, 1).write_bytes(shard_path(work, 1).read_bytes()[:-10])  # truncated
    with caplog.at_level(logging.WARNING, logger="cellseg_d2.inference.slide_shards"):
        (summary,) = _ranks(slide, tmp_path, resume=True)
    assert any(str(shard_path(work, 1)) in message for message in caplog.messages)
    redone = (set(range(len(plan.chunks))) - done) | {1}
    assert summary.predicted_tiles == sum(len(plan.chunks[c]) for c in redone)
    assert _outputs(tmp_path) == expected
