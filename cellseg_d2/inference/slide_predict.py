"""Predict a whole slide at the model's pixel size: plan, read ahead, predict, stitch, store, write.

The loop of one slide (issue 18):

1. open the slide once for its size, pyramid, pixel size and a tissue mask, then close it;
2. plan model-scale tiles over tissue (:mod:`~cellseg_d2.inference.slide_tiles`);
3. read tiles ahead of the model in a thread or DataLoader workers, each with its own slide
   handle (:mod:`~cellseg_d2.inference.slide_loader`);
4. keep each cell in the one tile that owns it, drop seam duplicates per chunk
   (:mod:`~cellseg_d2.inference.slide_stitch`);
5. write each chunk of tiles to the slide's SQLite cell store in one transaction; a run
   stopped anywhere resumes after the last finished chunk
   (:mod:`~cellseg_d2.inference.cell_store`);
6. stream the GeoJSON and CSV (and, when asked, the label pyramid) from the finished store
   (:mod:`~cellseg_d2.inference.slide_writers`).

Memory stays bounded by the tiles in flight and one chunk's cells, whatever the slide's size.
The predictor is any callable taking BGR uint8 images and returning one list of
:class:`~cellseg_d2.inference.detections.Detection` per image (``CellPredictor`` is one).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cellseg_d2.data.slide import SlideInfo, SlideReader, resolve_pixel_size
from cellseg_d2.errors import CellDataError, ConfigError
from cellseg_d2.inference.cell_store import CELL_STORE_SUFFIX, CellStore
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.slide_cells import predict_chunks
from cellseg_d2.inference.slide_labels import SLIDE_LABELS_SUFFIX
from cellseg_d2.inference.slide_loader import OpenReader, iter_tile_batches
from cellseg_d2.inference.slide_tiles import (
    SlideTile,
    plan_slide_tiles,
    slide_scale,
    tiles_touching_tissue,
)
from cellseg_d2.inference.slide_writers import (
    DEFAULT_SLIDE_FORMATS,
    SLIDE_FORMATS,
    write_slide_outputs,
)
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES, class_name

__all__ = [
    "TISSUE_THUMBNAIL_SIZE",
    "SlideSummary",
    "load_tissue",
    "predict_slide",
    "slide_output_paths",
]

logger = logging.getLogger(__name__)

#: Longest side of the thumbnail the automatic tissue mask is computed on.
TISSUE_THUMBNAIL_SIZE = 2048

#: ``predict(images) -> detections per image`` (BGR uint8 H x W x 3 in, tile pixels out).
Predictor = Callable[[Sequence[np.ndarray]], list[list[Detection]]]
#: ``"auto"``, ``"none"``, a mask image path, or ``(bool mask, level-0 px per mask px)``.
TissueOption = str | os.PathLike | tuple[np.ndarray, float]


@dataclass
class SlideSummary:
    """What :func:`predict_slide` did for one slide.

    Attributes:
        slide: the slide's file name.
        store: the finished cell store.
        outputs: ``{format: path}`` of the files written from it.
        grid_tiles: tiles in the full grid; ``tissue_tiles`` of them read tissue.
        predicted_tiles: tiles this run predicted; ``resumed_tiles`` came from an earlier run.
        cells_per_class: ``{class name: cells}``.
        tissue_area_mm2: area of the tissue mask, None without a mask or pixel size.
        seconds: wall time of the whole call.
        scale: slide pixel size / model pixel size; ``level`` the pyramid level read.
    """

    slide: str
    store: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    grid_tiles: int = 0
    tissue_tiles: int = 0
    predicted_tiles: int = 0
    resumed_tiles: int = 0
    cells_per_class: dict[str, int] = field(default_factory=dict)
    tissue_area_mm2: float | None = None
    seconds: float = 0.0
    scale: float = 1.0
    level: int = 0

    @property
    def cells(self) -> int:
        """All cells of the slide."""
        return sum(self.cells_per_class.values())

    def line(self) -> str:
        """The one-line summary logged at the end of a slide."""
        classes = ", ".join(f"{name} {n}" for name, n in self.cells_per_class.items()) or "none"
        area = "?" if self.tissue_area_mm2 is None else f"{self.tissue_area_mm2:.1f}"
        return (
            f"{self.slide}: {self.cells} cells ({classes}); tissue {area} mm2; "
            f"{self.tissue_tiles}/{self.grid_tiles} tiles ({self.resumed_tiles} resumed) at "
            f"scale {self.scale:.3g} from level {self.level}; {self.seconds:.1f} s"
        )


def slide_output_paths(
    output_dir: str | os.PathLike, slide_path: str | os.PathLike
) -> dict[str, Path]:
    """Where one slide's outputs go: ``{"store", "geojson", "csv", "labels"}`` under
    ``output_dir``.

    Named after the slide's file name without its last suffix (``a.svs`` ->
    ``a.cells.sqlite``, ``a.geojson``, ``a.cells.csv``, ``a.labels.ome.tif``), so slides of one
    folder never collide unless two differ only in their extension.
    """
    output_dir, stem = Path(output_dir), Path(slide_path).stem
    return {
        "store": output_dir / f"{stem}{CELL_STORE_SUFFIX}",
        "geojson": output_dir / f"{stem}.geojson",
        "csv": output_dir / f"{stem}.cells.csv",
        "labels": output_dir / f"{stem}{SLIDE_LABELS_SUFFIX}",
    }


def load_tissue(
    reader: SlideReader, tissue: TissueOption, pixel_size_um: float | None
) -> tuple[tuple[np.ndarray, float] | None, float | None]:
    """The tissue mask for the tile plan, and its area in mm².

    Why here and not in the plan: the mask comes from the slide (a thumbnail) or from a file,
    and the plan must stay a pure function of sizes.

    Args:
        reader: the open slide (``info``, ``thumbnail``).
        tissue: ``"auto"`` (``cellseg_d2.data.tissue.tissue_mask`` on a thumbnail of
            :data:`TISSUE_THUMBNAIL_SIZE`), ``"none"`` (every tile), a mask image (non-zero
            is tissue, covering the whole slide at any size) or ``(mask, downsample)``.
        pixel_size_um: level-0 pixel size, for the area.

    Returns:
        ``((mask, level-0 px per mask px) or None, area in mm² or None)``.

    Raises:
        CellDataError: the mask file cannot be read or its shape does not match the slide.
    """
    if isinstance(tissue, str) and tissue == "none":
        return None, None
    if isinstance(tissue, tuple):
        mask, downsample = np.asarray(tissue[0], dtype=bool), float(tissue[1])
    elif isinstance(tissue, str) and tissue == "auto":
        from cellseg_d2.data.tissue import tissue_mask

        thumbnail, downsample = reader.thumbnail(TISSUE_THUMBNAIL_SIZE)
        mask = np.asarray(tissue_mask(thumbnail), dtype=bool)
    else:
        mask, downsample = _read_mask_file(Path(tissue), reader.info)
    area = None
    if pixel_size_um:
        from cellseg_d2.data.tissue import tissue_area_mm2

        area = float(tissue_area_mm2(mask, downsample, pixel_size_um))
    return (mask, downsample), area


def _read_mask_file(path: Path, info: SlideInfo) -> tuple[np.ndarray, float]:
    """A tissue mask image and its downsample against the slide's level 0."""
    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) > 0
    except (OSError, ValueError) as exc:
        raise CellDataError(f"{path}: cannot read the tissue mask ({exc})") from exc
    width, height = info.width, info.height
    downsample = width / mask.shape[1]
    if abs(height / downsample - mask.shape[0]) > 1:
        raise CellDataError(
            f"{path}: tissue mask {mask.shape[1]}x{mask.shape[0]} does not have the slide's "
            f"aspect ({width}x{height})"
        )
    return mask, downsample


def _slide_pixel_size(info: SlideInfo, override: float | None, needed: bool) -> float | None:
    """The slide's µm/px (:func:`~cellseg_d2.data.slide.resolve_pixel_size`): required, with a
    clear error naming the file, when the model has a pixel size; otherwise only for areas in
    µm², so a missing or implausible value leaves them out instead of stopping."""
    if needed:
        return resolve_pixel_size(info, override)
    try:
        return resolve_pixel_size(info, override)
    except CellDataError as exc:
        if override is not None:
            raise
        logger.info("%s; areas are given in pixels only", exc)
        return None


def _plan_digest(tiles: Sequence[SlideTile]) -> str:
    """A short hash of the planned tiles (indices, windows, levels) for the resume check."""
    text = ";".join(f"{t.index},{t.x},{t.y},{t.width},{t.height},{t.level}" for t in tiles)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    # Long: one slide's steps in order (check, plan, resume or create the store, predict the
    # chunks, write the formats, summarise); the work of each lives in its own module.
    started = time.perf_counter()
    unknown = sorted(set(formats) - set(SLIDE_FORMATS))
    if unknown or chunk_tiles < 1:
        raise ConfigError(
            f"slide formats {unknown} (known: {list(SLIDE_FORMATS)}), chunk_tiles {chunk_tiles}"
        )
    slide_name = Path(reader_path).name
    reader = open_reader(reader_path)
    try:
        info = reader.info
        pixel_size = _slide_pixel_size(info, pixel_size_override, bool(model_pixel_size))
        scale = slide_scale(pixel_size, model_pixel_size)
        grid = plan_slide_tiles(info, scale, tile_size, overlap, max_cell_size=max_cell_size)
        mask, tissue_area = load_tissue(reader, tissue, pixel_size)
    finally:
        reader.close()
    tiles = grid if mask is None else tiles_touching_tissue(grid, *mask)
    paths = slide_output_paths(output_dir, reader_path)
    settings = {
        "slide": slide_name,
        "width": info.width,
        "height": info.height,
        # Outputs are in QuPath's frame: its OpenSlide server crops to the slide's bounds, as our
        # reader does, so no offset is added; the bounds' corner is kept for reference.
        "offset": [0, 0],
        "bounds_offset": list(info.offset),
        "pixel_size_um": pixel_size,
        "model_pixel_size": model_pixel_size or None,
        "scale": scale,
        "tile_size": tile_size,
        "overlap": overlap,
        "chunk_tiles": chunk_tiles,
        "tiles": len(tiles),
        "plan": _plan_digest(tiles),
        "model": model_id,
    }
    summary = SlideSummary(
        slide=slide_name,
        store=paths["store"],
        grid_tiles=len(grid),
        tissue_tiles=len(tiles),
        tissue_area_mm2=tissue_area,
        scale=scale,
        level=grid[0].level,
    )
    if resume and paths["store"].is_file():
        with CellStore.open(paths["store"]) as done:
            done.check_settings(settings)
        summary.resumed_tiles = len(tiles)
    else:
        read = functools.partial(
            iter_tile_batches,
            reader_path,
            open_reader,
            batch_size=batch_size,
            num_workers=num_workers,
        )
        store = CellStore.create(paths["store"], settings, resume=resume)
        try:
            summary.resumed_tiles, summary.predicted_tiles = predict_chunks(
                store,
                tiles,
                chunk_tiles,
                read,
                predictor,
                slide_name if progress else None,
                cell_workers=cell_workers,
            )
            store.finish()
        finally:
            store.close()
    with CellStore.open(paths["store"]) as store:
        summary.cells_per_class = {
            class_name(c, class_names): n for c, n in store.class_counts().items()
        }
        summary.outputs = write_slide_outputs(store, paths, formats, class_names, slide_name)
    summary.seconds = time.perf_counter() - started
    logger.info(summary.line())
    return summary
