"""Whole slides on several GPUs (or CPU processes) and machines, through detectron2's ``launch``.

Why this shape (the slide side of :mod:`~cellseg_d2.inference.predict_launch`): a slide is
already predicted chunk by chunk, and a chunk's cells depend on its own tiles only (seam
duplicates are dropped within a chunk). So the unit of work is the chunk:

1. the launching process plans every slide once (:func:`~cellseg_d2.inference.slide_plan
   .plan_slide`, the plan of a one-process run) and lists the chunks still to do: those without
   a good shard in the slide's work folder ``<stem>.cells.sqlite.partial.d/`` (which holds
   ``settings.json``, so a rerun with other settings is refused as by the cell store);
2. ``launch`` starts the ranks (NCCL on GPUs, gloo on CPU); rank ``r`` of ``n`` builds its own
   predictor and readers and predicts the entries ``r, r + n, ...`` of that list (for a fresh
   slide: chunks ``c`` with ``c % n == r``), writing each finished chunk atomically as
   ``chunk-000012.json``, then a small report, then waits for the others;
3. the launching process of machine 0 writes the chunks into the slide's store in order
   (:meth:`~cellseg_d2.inference.cell_store.CellStore.write_chunk`, so cell ids equal a
   one-process run's), finishes it, writes the formats and removes the work folder.

A rerun with ``--resume`` predicts only chunks without a good shard (a bad one is named,
removed and predicted again) and continues an interrupted assembly from the partial store.
Shards are read as untrusted input. With several machines the output folder must be on a shared
file system. NOTE: on CPU the ranks share the cores (fewer threads each), and a real model's
CPU results depend on the thread count; equal outputs to one process need equal counts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import launch
from detectron2.utils import comm
from tqdm import tqdm

from cellseg_d2.data.slide import open_slide
from cellseg_d2.errors import CellDataError, CellSegError
from cellseg_d2.inference.cell_store import CellStore
from cellseg_d2.inference.predict_launch import read_rank_report
from cellseg_d2.inference.predict_slides import (
    slide_cell_workers,
    slide_plan_options,
    slide_tile_factor,
)
from cellseg_d2.inference.predictor import CellPredictor
from cellseg_d2.inference.slide_cells import predict_chunk_list
from cellseg_d2.inference.slide_loader import OpenReader, iter_tile_batches
from cellseg_d2.inference.slide_plan import SlidePlan, SlideSummary, plan_slide
from cellseg_d2.inference.slide_predict import Predictor, write_planned_outputs
from cellseg_d2.inference.slide_shards import (
    prepare_slide_shards,
    read_chunk_shard,
    shard_path,
    slide_work_dir,
    write_chunk_shard,
)
from cellseg_d2.inference.slide_stitch import SlideCell
from cellseg_d2.inference.slide_tiles import SlideTile, TissueFilter
from cellseg_d2.utils.files import atomic_write

__all__ = [
    "REPORT_NAME",
    "distributed_slides",
    "predict_slides_on_ranks",
]

logger = logging.getLogger(__name__)

#: Each rank's report in the output folder (hidden; removed after the run).
REPORT_NAME = ".slides.rank-{rank}.report.json"
_REPORT_KEYS = frozenset({"chunks", "error"})


@dataclass(frozen=True)
class RankSlide:
    """What a rank needs of one slide (picklable): where to read, the chunks, where to write."""

    reader_path: Path
    chunks: list[list[SlideTile]]
    work_dir: Path
    plan_digest: str
    tissue: TissueFilter | None = None


@dataclass(frozen=True)
class SlidesJob:
    """The ranks' shared instructions (picklable: sent to spawned processes)."""

    slides: tuple[RankSlide, ...]
    open_reader: OpenReader
    make_predictor: Callable[[], Predictor]
    num_workers: int
    cell_workers: int
    tile_factor: float
    progress: bool
    report_dir: Path


def _assemble(plan: SlidePlan, resume: bool) -> None:
    """Write the shards into the slide's store in chunk order, finish it, drop the shards."""
    work_dir = slide_work_dir(plan.paths["store"])
    chunks = plan.chunks
    store = CellStore.create(plan.paths["store"], plan.settings, resume=resume)
    try:
        first = store.finished_chunks()  # an interrupted assembly continues
        if first > len(chunks):
            raise CellDataError(
                f"{store.path}: more chunks stored than planned; run without resume"
            )
        for chunk in range(first, len(chunks)):
            members = [tile.index for tile in chunks[chunk]]
            path = shard_path(work_dir, chunk)
            try:
                cells = read_chunk_shard(path, plan.settings["plan"], chunk, members)
            except CellDataError as exc:
                raise CellDataError(f"{exc}; rerun with --resume to predict it again") from exc
            store.write_chunk(chunk, members, cells)
        store.finish()
    finally:
        store.close()
    shutil.rmtree(work_dir, ignore_errors=True)


def predict_slides_on_ranks(
    slides: Sequence[Path],
    output_dir: str | os.PathLike,
    *,
    open_reader: OpenReader,
    make_predictor: Callable[[], Predictor],
    plan_options: Mapping[str, Any],
    formats: Sequence[str],
    class_names: Sequence[str],
    resume: bool = False,
    progress: bool = True,
    num_workers: int = 0,
    cell_workers: int = 0,
    tile_factor: float = 1.0,
    num_gpus: int = 2,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
) -> list[SlideSummary]:
    """Predict every slide on ``num_gpus`` processes per machine (see the module docstring).

    Args:
        slides: the slide files, in order.
        output_dir: the export folder (claimed and locked by the caller).
        open_reader: path -> reader (picklable: every rank opens its own).
        make_predictor: builds the predictor in each rank (picklable, e.g. a
            ``functools.partial`` of :class:`~cellseg_d2.inference.predictor.CellPredictor`).
        plan_options: :func:`~cellseg_d2.inference.slide_plan.plan_slide`'s keyword arguments
            (:func:`~cellseg_d2.inference.predict_slides.slide_plan_options`).
        formats, class_names: the outputs, as for one process.
        resume: skip finished stores and chunks with a good shard.
        progress: a progress bar on the first rank.
        num_workers, cell_workers: tile readers and cell processes of each rank.
        tile_factor: the predictor's one resize of every tile
            (:func:`~cellseg_d2.inference.predict_slides.slide_tile_factor`).
        num_gpus, num_machines, machine_rank, dist_url: as detectron2's ``launch``.

    Returns:
        One summary per slide on machine 0; an empty list on the other machines.

    Raises:
        CellDataError: bad input named by the planning or a rank (exit 2), a work folder of
            other settings, or a bad shard met during the assembly.
    """
    owner = machine_rank == 0
    plans = [
        plan_slide(path, open_reader, output_dir, formats=formats, **plan_options)
        for path in slides
    ]
    work: list[tuple[int, int]] = []
    fresh: list[bool] = []
    for index, plan in enumerate(plans):
        finished = resume and plan.paths["store"].is_file()
        if finished:
            with CellStore.open(plan.paths["store"]) as done:
                done.check_settings(plan.settings)
        fresh.append(not finished)
        work += [] if finished else [(index, c) for c in prepare_slide_shards(plan, resume, owner)]
    job = SlidesJob(
        tuple(
            RankSlide(
                p.reader_path,
                p.chunks,
                slide_work_dir(p.paths["store"]),
                p.settings["plan"],
                p.tissue,
            )
            for p in plans
        ),
        open_reader,
        make_predictor,
        num_workers,
        cell_workers,
        tile_factor,
        progress,
        Path(output_dir),
    )
    world_size = num_gpus * num_machines
    done: list[list[int]] = []
    if work:
        for rank in range(world_size if owner else 0):
            (job.report_dir / REPORT_NAME.format(rank=rank)).unlink(missing_ok=True)
        launch(
            _slides_rank,
            num_gpus,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=(job, work),
        )
        if not owner:
            return []
        reports = [
            read_rank_report(
                job.report_dir / REPORT_NAME.format(rank=rank), rank, _REPORT_KEYS, "chunks"
            )
            for rank in range(world_size)
        ]
        errors = [f"rank {r}: {rep['error']}" for r, rep in enumerate(reports) if rep["error"]]
        if errors:
            raise CellDataError("\n".join(errors))
        done = sorted(item for report in reports for item in report["chunks"])
        if done != sorted(map(list, work)):  # every chunk exactly once, none missing
            raise CellDataError(f"{job.report_dir}: the ranks' reports do not cover the work")
        for rank in range(world_size):
            (job.report_dir / REPORT_NAME.format(rank=rank)).unlink(missing_ok=True)
    elif not owner:
        return []
    summaries = []
    for index, plan in enumerate(plans):
        predicted = sum(len(plan.chunks[c]) for s, c in done if s == index)
        plan.summary.predicted_tiles = predicted
        plan.summary.resumed_tiles = len(plan.tiles) - predicted
        if fresh[index]:
            _assemble(plan, resume)
        summaries.append(write_planned_outputs(plan, formats, class_names))
    return summaries


def distributed_slides(
    cfg: CfgNode,
    tta: bool,
    slides: Sequence[Path],
    output_dir: str | os.PathLike,
    *,
    formats: Sequence[str],
    pixel_size: float | None = None,
    tissue: str = "auto",
    resume: bool = False,
    progress: bool = True,
    num_gpus: int = 2,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
) -> list[SlideSummary]:
    """:func:`predict_slides_on_ranks` with everything taken from the prediction config, as
    :func:`~cellseg_d2.inference.predict_slides.predict_slides` takes it for one process."""
    return predict_slides_on_ranks(
        slides,
        output_dir,
        open_reader=open_slide,
        make_predictor=functools.partial(CellPredictor, cfg, tta=tta),
        plan_options=slide_plan_options(cfg, pixel_size, tissue),
        formats=formats,
        class_names=tuple(cfg.DATASETS.CLASS_NAMES),
        resume=resume,
        progress=progress,
        num_workers=int(cfg.DATALOADER.NUM_WORKERS),
        cell_workers=slide_cell_workers(cfg),
        tile_factor=slide_tile_factor(cfg),
        num_gpus=num_gpus,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
    )


def _slides_rank(job: SlidesJob, work: list[tuple[int, int]]) -> None:
    """One rank: predict its share of ``(slide, chunk)`` into shards, report, wait for all."""
    rank, world_size = comm.get_rank(), comm.get_world_size()
    if not torch.cuda.is_available():
        # CPU ranks share the cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    mine = work[rank::world_size]  # as predict_launch.rank_entries: spread, no gap or overlap
    done: list[list[int]] = []
    error = None
    try:
        predictor = job.make_predictor()
        at_model_scale = getattr(predictor, "inputs_at_model_scale", None)
        with at_model_scale(job.tile_factor) if at_model_scale else contextlib.nullcontext():
            for index in range(len(job.slides)):
                numbers = [chunk for s, chunk in mine if s == index]
                if numbers:
                    _predict_slide_chunks(job, index, numbers, predictor, done)
    except CellSegError as exc:  # reported to the launching process, which exits 2
        error = str(exc)
    with atomic_write(job.report_dir / REPORT_NAME.format(rank=rank), "w") as handle:
        json.dump({"chunks": done, "error": error}, handle)
    comm.synchronize()  # every rank done before machine 0 assembles


def _predict_slide_chunks(
    job: SlidesJob, index: int, numbers: list[int], predictor: Predictor, done: list[list[int]]
) -> None:
    """Predict chunks ``numbers`` of slide ``index``, each into its shard."""
    slide = job.slides[index]
    read = functools.partial(
        iter_tile_batches,
        slide.reader_path,
        job.open_reader,
        batch_size=int(getattr(predictor, "batch_size", 1)),
        num_workers=job.num_workers,
    )

    def write(chunk: int, tiles: list[int], cells: list[SlideCell]) -> None:
        write_chunk_shard(shard_path(slide.work_dir, chunk), slide.plan_digest, chunk, tiles, cells)
        done.append([index, chunk])

    chunks = [(chunk, slide.chunks[chunk]) for chunk in numbers]
    show = job.progress and comm.is_main_process()
    bar = tqdm(
        total=sum(len(members) for _, members in chunks),
        unit="tile",
        desc=f"{slide.reader_path.name} (rank 0)" if show else None,
        disable=not show,
    )
    with bar:
        predict_chunk_list(chunks, write, read, predictor, bar, job.cell_workers, slide.tissue)
