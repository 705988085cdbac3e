"""Plan a whole slide before any tile is predicted: pixel size, tissue, tiles, settings, paths.

Why its own module: the plan is what every process of a slide must agree on. One process
(:func:`~cellseg_d2.inference.slide_predict.predict_slide`) plans and predicts in turn; several
(:mod:`~cellseg_d2.inference.slide_ranks`) have the launching process plan once and hand the
same :class:`SlidePlan` to every rank and to the assembly. Opening the slide, reading the
tissue mask and hashing the tile plan happen here and nowhere else.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cellseg_d2.data.slide import SlideInfo, SlideReader, resolve_pixel_size
from cellseg_d2.errors import CellDataError, ConfigError
from cellseg_d2.inference.cell_store import CELL_STORE_SUFFIX
from cellseg_d2.inference.slide_cells import slide_chunks
from cellseg_d2.inference.slide_labels import SLIDE_LABELS_SUFFIX
from cellseg_d2.inference.slide_loader import OpenReader
from cellseg_d2.inference.slide_tiles import (
    SlideTile,
    TissueFilter,
    plan_slide_tiles,
    slide_scale,
    tiles_touching_tissue,
)
from cellseg_d2.inference.slide_writers import DEFAULT_SLIDE_FORMATS, SLIDE_FORMATS

__all__ = [
    "TISSUE_THUMBNAIL_SIZE",
    "SlidePlan",
    "SlideSummary",
    "TissueOption",
    "load_tissue",
    "plan_slide",
    "slide_output_paths",
]

logger = logging.getLogger(__name__)

#: Longest side of the thumbnail the automatic tissue mask is computed on.
TISSUE_THUMBNAIL_SIZE = 2048
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


@dataclass
class SlidePlan:
    """One planned slide: what :func:`plan_slide` decided before any tile is predicted.

    Why a value of its own: a slide predicted on several processes
    (:mod:`~cellseg_d2.inference.slide_ranks`) is planned once by the launching process, and
    every rank and the assembly must use exactly this plan and these settings.

    Attributes:
        reader_path: the slide file.
        tiles: the tiles to predict (over tissue), in plan order.
        chunk_tiles: tiles per chunk (stitched and stored together).
        settings: what the cell store records and a resumed run must match.
        paths: :func:`slide_output_paths` of the slide.
        summary: the slide's summary so far (plan figures; filled in by the rest).
        started: ``time.perf_counter()`` when planning began.
        tissue: keeps the cells on tissue (None without a tissue mask).
    """

    reader_path: Path
    tiles: list[SlideTile]
    chunk_tiles: int
    settings: dict
    paths: dict[str, Path]
    summary: SlideSummary
    started: float
    tissue: TissueFilter | None = None

    @property
    def chunks(self) -> list[list[SlideTile]]:
        """The tiles grouped into chunks, in order (chunk ``c`` is ``chunks[c]``)."""
        return slide_chunks(self.tiles, self.chunk_tiles)


def plan_slide(
    reader_path: str | os.PathLike,
    open_reader: OpenReader,
    output_dir: str | os.PathLike,
    *,
    model_pixel_size: float | None,
    pixel_size_override: float | None = None,
    tile_size: int = 1024,
    overlap: int = 128,
    tissue: TissueOption = "auto",
    formats: Sequence[str] = DEFAULT_SLIDE_FORMATS,
    chunk_tiles: int = 32,
    max_cell_size: int | None = None,
    model_id: str = "",
) -> SlidePlan:
    """Open the slide once and plan it: pixel size, tiles over tissue, settings, output paths.

    The arguments are :func:`predict_slide`'s (which calls this first).

    Raises:
        ConfigError: bad tiling settings or formats, or a pixel size is needed and unknown.
        CellDataError: a bad tissue mask file.
    """
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
    tissue_filter = None if mask is None else TissueFilter(*mask)
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
        "tissue": None if tissue_filter is None else tissue_filter.digest,
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
    return SlidePlan(
        Path(reader_path), list(tiles), chunk_tiles, settings, paths, summary, started,
        tissue=tissue_filter,
    )  # fmt: skip
