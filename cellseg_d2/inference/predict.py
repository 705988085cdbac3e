"""From a folder of test images to submission and export files: the body of ``tools/predict.py``.

A run over thousands of images must survive one bad image and a Ctrl-C without losing the work
done, and must not grow in memory with the folder. So results never pile up in memory: each
image's results go to small files in a work folder beside the main output (``<output>.partial/``:
``<image_id>.json`` holds the image's COCO results and marks it done, ``<image_id>.csv`` its
table rows), each written atomically, while label images and GeoJSON files go straight to their
final place. At the end the submission and the table are assembled by streaming those shards
(:func:`~cellseg_d2.inference.submission.write_submission_parts`) and the work folder is removed.
A ``fingerprint.json`` in the work folder records what made the shards (config, weights,
thresholds, formats, id map) so that ``--resume`` never mixes results of two different runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from detectron2.config import CfgNode
from tqdm import tqdm

from cellseg_d2.data.io import read_image
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import atomic_write, sha256_file

from ..config import load_cellseg_config
from ..data.register import check_num_classes
from ..engine.trainer import adapt_config_to_machine
from .export import (
    CSV_COLUMNS,
    cell_table_rows,
    detections_to_label_images,
    export_paths,
    write_geojson,
    write_label_images,
)
from .predictor import CellPredictor, Detection, detections_to_results
from .submission import encode_results, write_submission_parts

__all__ = [
    "CSV_FILE_NAME",
    "PredictionShards",
    "PredictionSummary",
    "build_predict_config",
    "iter_batches",
    "iter_predictions",
    "predict_folder",
    "predict_to_files",
    "prediction_fingerprint",
    "skipped_list_path",
    "work_dir_for",
]

logger = logging.getLogger(__name__)


def build_predict_config(
    config_file: str,
    opts: Sequence[str] = (),
    score_thresh: float | None = None,
    mask_thresh: float | None = None,
) -> CfgNode:
    """The frozen config for prediction: file, ``KEY VALUE`` overrides, then the threshold
    flags (``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, ``MODEL.CELLSEG.MASK_THRESHOLD``), adapted to
    this machine (CPU without CUDA).

    The class names must match the head (:func:`~cellseg_d2.data.register.check_num_classes`):
    the outputs name classes by ``DATASETS.CLASS_NAMES``, so a mismatch stops before any work.
    """
    cfg = load_cellseg_config(config_file, opts)
    check_num_classes(cfg)
    if score_thresh is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    if mask_thresh is not None:
        cfg.MODEL.CELLSEG.MASK_THRESHOLD = mask_thresh
    cfg = adapt_config_to_machine(cfg)
    cfg.freeze()
    return cfg


def iter_batches(
    paths: Sequence[Path], batch_size: int
) -> Iterator[tuple[list[int], list[np.ndarray | CellDataError]]]:
    """Yield ``(indices, images)`` batches, reading the next batch while the caller works.

    TIFF decoding (LZW) runs in a background thread and releases the GIL, so it overlaps model
    inference instead of adding to it. Only two batches are ever in memory. An image that cannot
    be read (e.g. a truncated TIFF, whose header looked fine) comes as its
    :class:`CellDataError` in place of the array, so the caller decides whether to stop or skip.
    """

    def read(path: Path) -> np.ndarray | CellDataError:
        try:
            return read_image(path)
        except CellDataError as exc:
            return exc

    def load(start: int) -> tuple[list[int], list[np.ndarray | CellDataError]]:
        indices = list(range(start, min(start + batch_size, len(paths))))
        return indices, [read(paths[i]) for i in indices]

    starts = list(range(0, len(paths), batch_size))
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, starts[0])
        for next_start in [*starts[1:], None]:
            batch = pending.result()
            if next_start is not None:
                pending = pool.submit(load, next_start)
            yield batch


def iter_predictions(
    predictor: CellPredictor, paths: Sequence[Path], progress: bool = True
) -> Iterator[tuple[int, np.ndarray | CellDataError, list[Detection]]]:
    """Yield ``(index, image, detections)`` for every path, in order, one image at a time.

    An unreadable image comes as ``(index, CellDataError, [])``; the other images of its batch
    are still predicted.

    Args:
        predictor: the model wrapper (its ``batch_size`` images per model call).
        paths: the images.
        progress: show a progress bar with images/s and ETA.
    """
    bar = tqdm(total=len(paths), unit="img", disable=not progress, desc="predict")
    try:
        for indices, images in iter_batches(paths, predictor.batch_size):
            readable = [i for i, image in enumerate(images) if isinstance(image, np.ndarray)]
            outputs = predictor([images[i] for i in readable]) if readable else []
            detections: list[list[Detection]] = [[] for _ in images]
            for position, output in zip(readable, outputs):
                detections[position] = output
            yield from zip(indices, images, detections)
            bar.update(len(indices))
    finally:
        bar.close()


def predict_folder(
    predictor: CellPredictor,
    input_dir: str | os.PathLike,
    entries: Sequence[dict],
    progress: bool = True,
) -> list[dict]:
    """Predict every image of an id map and return the COCO results list, in memory.

    For a few images (figures, benchmarks); a whole test folder goes through
    :func:`predict_to_files`, which streams to disk and survives interruptions.

    Args:
        predictor: the model wrapper.
        input_dir: folder holding the ``file_name`` of every entry.
        entries: checked id-map entries (``file_name``, ``id``, ``height``, ``width``).
        progress: show a progress bar with images/s and ETA.

    Returns:
        Results with ``image_id`` from the map; images without detections add nothing.

    Raises:
        CellDataError: an image cannot be read.
    """
    paths = [Path(input_dir) / entry["file_name"] for entry in entries]
    results: list[dict] = []
    for index, image, detections in iter_predictions(predictor, paths, progress):
        if isinstance(image, CellDataError):
            raise image
        entry = entries[index]
        results.extend(
            detections_to_results(detections, entry["id"], entry["height"], entry["width"])
        )
    predictor.warn_detection_cap(len(paths))
    logger.info("%d detections on %d images", len(results), len(paths))
    return results


#: The per-cell table of the ``csv`` format, in the export folder.
CSV_FILE_NAME = "cells.csv"
_FINGERPRINT_FILE = "fingerprint.json"


def work_dir_for(main_output: str | os.PathLike) -> Path:
    """The work folder of a run whose main output (submission file or export folder) is
    ``main_output``: ``<main_output>.partial`` beside it."""
    main_output = Path(main_output)
    return main_output.with_name(main_output.name + ".partial")


def skipped_list_path(main_output: str | os.PathLike) -> Path:
    """Where ``--skip-bad`` lists the images it skipped: ``<main_output>.skipped.txt``."""
    main_output = Path(main_output)
    return main_output.with_name(main_output.name + ".skipped.txt")


def prediction_fingerprint(
    cfg: CfgNode, tta: bool, formats: Sequence[str], entries: Sequence[dict]
) -> dict[str, str]:
    """What decides a run's results, to refuse resuming shards made by a different run.

    Args:
        cfg: the prediction config (the device and output folder do not count: the same
            weights give the same cells on CPU and GPU).
        tta: test-time augmentation on or off.
        formats: the requested formats (a resumed run must write every format for every image).
        entries: the id map entries.

    Returns:
        Readable fields: ``score_thresh``, ``mask_thresh``, ``weights`` (SHA-256 of a local
        file, else the name), ``config`` (SHA-256 of the rest), ``tta``, ``formats``,
        ``id_map`` (SHA-256).
    """
    rest = cfg.clone()
    rest.defrost()
    rest.MODEL.DEVICE = ""
    rest.OUTPUT_DIR = ""
    weights = cfg.MODEL.WEIGHTS
    return {
        "score_thresh": repr(float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)),
        "mask_thresh": repr(float(cfg.MODEL.CELLSEG.MASK_THRESHOLD)),
        "weights": f"sha256:{sha256_file(weights)}" if os.path.isfile(weights) else weights,
        "config": hashlib.sha256(rest.dump().encode()).hexdigest(),
        "tta": str(bool(tta)),
        "formats": ",".join(sorted(formats)),
        "id_map": hashlib.sha256(json.dumps(list(entries), sort_keys=True).encode()).hexdigest(),
    }


class PredictionShards:
    """The work folder of a streamed run: one small file per finished image.

    ``<image_id>.json`` (the image's COCO results, possibly ``[]``) is written last and marks the
    image done; ``<image_id>.csv`` holds its table rows when the csv format is on. Every file is
    written atomically, so a shard is complete or absent, whenever the run stops.
    """

    def __init__(self, work_dir: Path, fingerprint: dict[str, str], resume: bool) -> None:
        """Open (``resume``) or create the work folder.

        Raises:
            CellDataError: the folder exists without ``resume`` (its results would be lost), or
                was made by a run with another fingerprint (naming the fields that differ).
        """
        self.work_dir = work_dir
        stamp = work_dir / _FINGERPRINT_FILE
        if work_dir.exists():
            if not resume:
                raise CellDataError(
                    f"{work_dir}: holds the results of an unfinished run; pass --resume to "
                    "continue it, or remove the folder to start over"
                )
            try:
                stored = json.loads(stamp.read_text())
            except (OSError, ValueError) as exc:
                raise CellDataError(
                    f"{stamp}: unreadable ({exc}); remove {work_dir} to start over"
                ) from exc
            differ = sorted(
                key for key in fingerprint.keys() | stored.keys()
                if stored.get(key) != fingerprint.get(key)
            )  # fmt: skip
            if differ:
                raise CellDataError(
                    f"{work_dir}: its results were made with another {', '.join(differ)} "
                    f"(stored in {stamp}); resume with the same settings, or remove the folder "
                    "to start over"
                )
        else:
            if resume:
                logger.info("%s: nothing to resume, starting a new run", work_dir)
            with atomic_write(stamp, "w") as handle:
                json.dump(fingerprint, handle, indent=1)

    def is_done(self, image_id: int) -> bool:
        """True when the image's results are complete in the work folder."""
        return (self.work_dir / f"{image_id}.json").is_file()

    def add(self, image_id: int, coco_text: str, csv_text: str | None) -> None:
        """Store one image's results; the COCO shard goes last, marking the image done."""
        if csv_text is not None:
            with atomic_write(self.work_dir / f"{image_id}.csv", "w") as handle:
                handle.write(csv_text)
        with atomic_write(self.work_dir / f"{image_id}.json", "w") as handle:
            handle.write(coco_text)

    def iter_texts(self, image_ids: Sequence[int], suffix: str) -> Iterator[str]:
        """The shard texts of ``image_ids`` with ``suffix`` (``.json``, ``.csv``), one at a
        time, skipping images without one."""
        for image_id in image_ids:
            path = self.work_dir / f"{image_id}{suffix}"
            if path.is_file():
                yield path.read_text()

    def remove(self) -> None:
        """Delete the work folder after the outputs were assembled."""
        shutil.rmtree(self.work_dir)


@dataclass
class PredictionSummary:
    """What a :func:`predict_to_files` run did.

    Attributes:
        images: images in the id map.
        predicted: images predicted by this run.
        resumed: images whose results an earlier run had left in the work folder.
        detections: detections found by this run (resumed images not counted).
        skipped: ``(file name, reason)`` of images skipped with ``skip_bad``.
        work_dir: the work folder; kept when images were skipped, else removed.
    """

    images: int
    predicted: int = 0
    resumed: int = 0
    detections: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    work_dir: Path | None = None


def predict_to_files(
    predictor: CellPredictor,
    input_dir: str | os.PathLike,
    entries: Sequence[dict],
    *,
    formats: Sequence[str],
    fingerprint: dict[str, str],
    output: str | os.PathLike | None = None,
    zip_output: bool = False,
    output_dir: str | os.PathLike | None = None,
    class_names: Sequence[str] = (),
    resume: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> PredictionSummary:
    """Predict every image of an id map into the requested formats, streaming to disk.

    Each finished image is stored at once (see the module docstring); nothing but the current
    batch is held in memory. The main output (``output`` when ``coco`` is requested, else
    ``output_dir``) names the work folder (:func:`work_dir_for`) and the skipped list
    (:func:`skipped_list_path`).

    Args:
        predictor: the model wrapper.
        input_dir: folder holding the ``file_name`` of every entry.
        entries: checked id-map entries (``file_name``, ``id``, ``height``, ``width``).
        formats: any of :data:`~cellseg_d2.inference.export.EXPORT_FORMATS`.
        fingerprint: from :func:`prediction_fingerprint`, stored with the shards.
        output: the submission file (``coco``).
        zip_output: write the submission as the zip CodaBench takes.
        output_dir: the folder of the other formats (``labels/``, ``geojson/``, ``cells.csv``).
        class_names: names of the 0-based classes (``DATASETS.CLASS_NAMES``).
        resume: continue the run whose shards are in the work folder, predicting only the
            images it has not finished.
        skip_bad: log, list and skip an unreadable image instead of stopping.
        progress: show a progress bar.

    Returns:
        The run's summary.

    Raises:
        CellDataError: an unreadable image without ``skip_bad`` (named; the finished images
            stay in the work folder for ``--resume``), or a work folder that cannot be resumed.
    """
    if "coco" in formats and output is None:
        raise ValueError("the coco format needs an output file")
    if set(formats) - {"coco"} and output_dir is None:
        raise ValueError(f"formats {sorted(set(formats) - {'coco'})} need an output folder")
    main_output = Path(output) if "coco" in formats else Path(output_dir)
    export_dir = Path(output_dir) if output_dir is not None else None
    shards = PredictionShards(work_dir_for(main_output), fingerprint, resume)
    summary = PredictionSummary(images=len(entries), work_dir=shards.work_dir)
    todo = [entry for entry in entries if not shards.is_done(entry["id"])]
    summary.resumed = len(entries) - len(todo)
    if summary.resumed:
        logger.info("Resuming: %d of %d images already done", summary.resumed, len(entries))
    paths = [Path(input_dir) / entry["file_name"] for entry in todo]
    for index, image, detections in iter_predictions(predictor, paths, progress):
        entry = todo[index]
        if isinstance(image, CellDataError):
            if not skip_bad:
                raise CellDataError(
                    f"{image}\n  {summary.resumed + summary.predicted} finished image(s) are kept "
                    f"in {shards.work_dir}: replace or fix the file and rerun with --resume, or "
                    "pass --skip-bad to leave it out"
                )
            logger.warning("Skipping %s", image)
            summary.skipped.append((entry["file_name"], str(image)))
            continue
        _export_image(entry, image, detections, formats, export_dir, class_names, shards)
        summary.predicted += 1
        summary.detections += len(detections)
    predictor.warn_detection_cap(summary.predicted)
    _assemble(shards, entries, formats, output, zip_output, export_dir)
    skipped_path = skipped_list_path(main_output)
    if summary.skipped:
        with atomic_write(skipped_path, "w") as handle:
            handle.writelines(f"{name}\t{reason}\n" for name, reason in summary.skipped)
        logger.warning(
            "Skipped %d unreadable image(s), listed in %s; their finished neighbours stay in %s "
            "so that --resume after fixing them predicts only those",
            len(summary.skipped),
            skipped_path,
            shards.work_dir,
        )
    else:
        skipped_path.unlink(missing_ok=True)  # a list left by an earlier run no longer holds
        shards.remove()
        summary.work_dir = None
    return summary


def _export_image(
    entry: dict,
    image: np.ndarray,
    detections: list[Detection],
    formats: Sequence[str],
    export_dir: Path | None,
    class_names: Sequence[str],
    shards: PredictionShards,
) -> None:
    """Write one image's per-image files and store its shards (COCO results last)."""
    height, width = entry["height"], entry["width"]
    csv_text = None
    if export_dir is not None:
        paths = export_paths(export_dir, entry["file_name"])
        if "labels" in formats or "csv" in formats:
            labels = detections_to_label_images(detections, height, width)
            if "labels" in formats:
                write_label_images(labels, paths["instances"], paths["classes"])
            if "csv" in formats:
                csv_text = cell_table_rows(
                    labels, image, entry["file_name"], entry["id"], class_names
                )
        if "geojson" in formats:
            write_geojson(paths["geojson"], detections, class_names)
    results = (
        detections_to_results(detections, entry["id"], height, width) if "coco" in formats else []
    )
    shards.add(entry["id"], encode_results(results), csv_text)


def _assemble(
    shards: PredictionShards,
    entries: Sequence[dict],
    formats: Sequence[str],
    output: str | os.PathLike | None,
    zip_output: bool,
    export_dir: Path | None,
) -> None:
    """Stream the shards into the submission and the table, in id-map order, atomically."""
    image_ids = [entry["id"] for entry in entries]
    if "coco" in formats:
        write_submission_parts(shards.iter_texts(image_ids, ".json"), output, zip_output)
        logger.info("Wrote the submission %s", output)
    if "csv" in formats:
        table = export_dir / CSV_FILE_NAME
        with atomic_write(table, "w") as handle:
            handle.write(",".join(CSV_COLUMNS) + "\n")
            for text in shards.iter_texts(image_ids, ".csv"):
                handle.write(text)
        logger.info("Wrote the per-cell table %s", table)
