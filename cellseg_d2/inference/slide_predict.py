"""Predict a whole slide at the model's pixel size: plan, read ahead, predict, stitch, store, write.

The loop of one slide (issue 18):

1. open the slide once for its size, pyramid, pixel size and a tissue mask, then close it;
2. plan model-scale tiles over tissue (:mod:`~cellseg_d2.inference.slide_plan`; on several
   processes one plan serves them all, :mod:`~cellseg_d2.inference.slide_ranks`);
3. read tiles ahead of the model in a thread or DataLoader workers, each with its own slide
   handle (:mod:`~cellseg_d2.inference.slide_loader`);
4. keep each cell in the one tile that owns it, drop seam duplicates per chunk
   (:mod:`~cellseg_d2.inference.slide_stitch`);
5. write each chunk of tiles to the slide's SQLite cell store in one transaction; a run
   stopped anywhere resumes after the last finished chunk
   (:mod:`~cellseg_d2.inference.cell_store`);
6. stream the GeoJSON and CSV from each chunk as it is stored, published whole when the
   slide ends, and paint the label pyramid (when asked) from the finished store
   (:mod:`~cellseg_d2.inference.slide_writers`); a slide whose store several processes filled,
   or a finished store resumed, gets its GeoJSON and CSV in one pass over the store.

Memory stays bounded by the tiles in flight and one chunk's cells, whatever the slide's size.
The predictor is any callable taking BGR uint8 images and returning one list of
:class:`~cellseg_d2.inference.detections.Detection` per image (``CellPredictor`` is one).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Collection, Sequence

import numpy as np

from cellseg_d2.inference.cell_store import CellStore
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.slide_cells import predict_chunks
from cellseg_d2.inference.slide_loader import OpenReader, iter_tile_batches
from cellseg_d2.inference.slide_plan import (
    TISSUE_THUMBNAIL_SIZE,
    SlidePlan,
    SlideSummary,
    TissueOption,
    load_tissue,
    plan_slide,
    slide_output_paths,
)
from cellseg_d2.inference.slide_stitch import SlideCell
from cellseg_d2.inference.slide_writers import (
    DEFAULT_SLIDE_FORMATS,
    TEXT_FORMATS,
    slide_text_writer,
    write_slide_outputs,
)
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES, class_name

# The plan's names are re-exported: callers know them from here.
__all__ = [
    "TISSUE_THUMBNAIL_SIZE",
    "SlidePlan",
    "SlideSummary",
    "TissueOption",
    "load_tissue",
    "plan_slide",
    "predict_slide",
    "slide_output_paths",
    "write_planned_outputs",
]

logger = logging.getLogger(__name__)

#: ``predict(images) -> detections per image`` (BGR uint8 H x W x 3 in, tile pixels out).
Predictor = Callable[[Sequence[np.ndarray]], list[list[Detection]]]


def write_planned_outputs(
    plan: SlidePlan,
    formats: Sequence[str],
    class_names: Sequence[str],
    streamed: Collection[str] = (),
) -> SlideSummary:
    """From the slide's finished store: count the cells, write ``formats`` (but the
    ``streamed`` ones, written while predicting), log the summary.

    Why apart: the last step of every slide, whichever processes filled its store.
    """
    summary = plan.summary
    with CellStore.open(plan.paths["store"]) as store:
        summary.cells_per_class = {
            class_name(c, class_names): n for c, n in store.class_counts().items()
        }
        summary.outputs = write_slide_outputs(
            store, plan.paths, formats, class_names, summary.slide, streamed
        )
    summary.seconds = time.perf_counter() - plan.started
    logger.info(summary.line())
    return summary


def predict_slide(
    reader_path: str | os.PathLike,
    open_reader: OpenReader,
    predictor: Predictor,
    output_dir: str | os.PathLike,
    *,
    model_pixel_size: float | None,
    pixel_size_override: float | None = None,
    tile_size: int = 1024,
    overlap: int = 128,
    batch_size: int = 4,
    num_workers: int = 2,
    tissue: TissueOption = "auto",
    resume: bool = False,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    formats: Sequence[str] = DEFAULT_SLIDE_FORMATS,
    chunk_tiles: int = 32,
    max_cell_size: int | None = None,
    model_id: str = "",
    progress: bool = True,
    cell_workers: int = 0,
) -> SlideSummary:
    """Predict every cell of one slide into its cell store, then write the chosen formats.

    Why chunks: each ``chunk_tiles`` tiles are stitched together (seam duplicates between them
    are dropped) and committed as one transaction, so a stop loses at most one chunk of work
    and ``resume`` continues from there with identical results. With ``resume`` and a finished
    store of the same settings, nothing is predicted: the formats are written again from it.

    Args:
        reader_path: the slide file.
        open_reader: path -> reader (``cellseg_d2.data.slide``); picklable for workers.
        predictor: BGR images -> detections per image (tile pixels).
        output_dir: where :func:`slide_output_paths` go.
        model_pixel_size: µm per pixel the model was trained at; None or 0: the slide as it is.
        pixel_size_override: µm per level-0 pixel instead of the slide's own metadata.
        tile_size, overlap: model-scale tiling (overlap at least the largest cell).
        batch_size: tiles per predictor call.
        num_workers: DataLoader reading processes; 0 reads in a background thread.
        tissue: see :func:`load_tissue`.
        resume: continue a stopped run (same settings) instead of starting over.
        class_names: names of the 0-based classes, for the outputs.
        formats: any of :data:`~cellseg_d2.inference.slide_writers.SLIDE_FORMATS` (``labels``
            only when asked: the label pyramid is the slowest and largest output).
        chunk_tiles: tiles per transaction (work lost at most on a stop).
        max_cell_size: largest cell at model scale, checked against ``overlap``.
        model_id: identifies the model (e.g. the checkpoint's hash) so that a resumed store is
            never continued with another model.
        progress: show a tqdm bar with tiles/s and ETA.
        cell_workers: processes that outline and measure the cells while the model runs
            (:class:`~cellseg_d2.inference.slide_cells.TileCellsPool`; 0: in the loop).

    Returns:
        The :class:`SlideSummary`, also logged as one line.

    Raises:
        ConfigError: bad tiling settings or formats, or a pixel size is needed and unknown.
        CellDataError: a resumed store of other settings, or a bad tissue mask file.
    """
    plan = plan_slide(
        reader_path,
        open_reader,
        output_dir,
        model_pixel_size=model_pixel_size,
        pixel_size_override=pixel_size_override,
        tile_size=tile_size,
        overlap=overlap,
        tissue=tissue,
        formats=formats,
        chunk_tiles=chunk_tiles,
        max_cell_size=max_cell_size,
        model_id=model_id,
    )
    summary, paths = plan.summary, plan.paths
    if resume and paths["store"].is_file():
        with CellStore.open(paths["store"]) as done:
            done.check_settings(plan.settings)
        summary.resumed_tiles = len(plan.tiles)
    else:
        read = functools.partial(
            iter_tile_batches,
            reader_path,
            open_reader,
            batch_size=batch_size,
            num_workers=num_workers,
        )
        streamed = [name for name in TEXT_FORMATS if name in formats]
        store = CellStore.create(paths["store"], plan.settings, resume=resume)
        try:
            with slide_text_writer(
                store,
                paths["geojson"] if "geojson" in streamed else None,
                paths["csv"] if "csv" in streamed else None,
                class_names,
                summary.slide,
            ) as text:
                if streamed:
                    text.write(store.iter_cells())  # a resumed store's cells come first

                def write(chunk: int, tiles: list[int], cells: list[SlideCell]) -> None:
                    store.write_chunk(chunk, tiles, cells)
                    if streamed:
                        text.write(store.iter_cells(after=text.last_id))

                summary.resumed_tiles, summary.predicted_tiles = predict_chunks(
                    store,
                    plan.tiles,
                    chunk_tiles,
                    read,
                    predictor,
                    summary.slide if progress else None,
                    cell_workers=cell_workers,
                    keep=plan.tissue,
                    write=write,
                )
                store.finish()
        finally:
            store.close()
        return write_planned_outputs(plan, formats, class_names, streamed)
    return write_planned_outputs(plan, formats, class_names)
