"""From a folder of test images to submission and export files: the body of ``tools/predict.py``.

A run over thousands of images must survive one bad image and a Ctrl-C without losing the work
done, and must not grow in memory with the folder. So results never pile up in memory: each
image's results go to small files (shards) in a work folder beside the main output
(:mod:`~cellseg_d2.inference.shards`), each written atomically, while label images and GeoJSON
files go straight to their final place. At the end the submission and the table are assembled
by streaming those shards, each checked, and the outputs are read back and checked before they
replace anything (:mod:`~cellseg_d2.inference.assemble`); the work folder is then removed. The
whole run, assembly included, holds the lock of its outputs
(:func:`~cellseg_d2.inference.outputs.claim_outputs`): a second run into the same output,
``--resume`` or not, is refused while the first runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from detectron2.config import CfgNode
from tqdm import tqdm

from cellseg_d2.config import build_config
from cellseg_d2.data.io import read_image
from cellseg_d2.data.register import check_num_classes
from cellseg_d2.errors import CellDataError
from cellseg_d2.evaluation.submission import encode_results
from cellseg_d2.inference.assemble import assemble_outputs
from cellseg_d2.inference.detections import Detection
from cellseg_d2.inference.export import write_image_exports
from cellseg_d2.inference.outputs import claim_outputs, remove_stale_temps, run_files
from cellseg_d2.inference.predictor import CellPredictor, detections_to_results
from cellseg_d2.inference.shards import PredictionShards, skipped_list_path, work_dir_for
from cellseg_d2.utils.files import atomic_write

__all__ = [
    "MAX_ID_MAP_BYTES",
    "Distribute",
    "ImagesJob",
    "PredictionSummary",
    "entry_paths",
    "build_predict_config",
    "iter_batches",
    "iter_predictions",
    "predict_entries",
    "predict_folder",
    "predict_to_files",
]

logger = logging.getLogger(__name__)

#: The largest id map read (~700,000 images); checked before reading, see ``tools/predict.py``.
MAX_ID_MAP_BYTES = 64 << 20


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
    opts = list(opts)
    if score_thresh is not None:
        opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", float(score_thresh)]
    if mask_thresh is not None:
        opts += ["MODEL.CELLSEG.MASK_THRESHOLD", float(mask_thresh)]
    cfg = build_config(config_file, opts)
    check_num_classes(cfg)
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


def entry_paths(
    input_dir: str | os.PathLike | Mapping[str, Path], entries: Sequence[dict]
) -> list[Path]:
    """The file of each id-map entry: in ``input_dir``, or looked up by file name."""
    if isinstance(input_dir, Mapping):
        return [Path(input_dir[entry["file_name"]]) for entry in entries]
    return [Path(input_dir) / entry["file_name"] for entry in entries]


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
    input_dir: str | os.PathLike | Mapping[str, Path],
    entries: Sequence[dict],
    progress: bool = True,
) -> list[dict]:
    """Predict every image of an id map and return the COCO results list, in memory.

    For a few images (figures, benchmarks); a whole test folder goes through
    :func:`predict_to_files`, which streams to disk and survives interruptions.

    Args:
        predictor: the model wrapper.
        input_dir: folder holding the ``file_name`` of every entry, or ``file_name -> path``
            (inputs from several folders, :func:`~cellseg_d2.inference.inputs.collect_inputs`).
        entries: checked id-map entries (``file_name``, ``id``, ``height``, ``width``).
        progress: show a progress bar with images/s and ETA.

    Returns:
        Results with ``image_id`` from the map; images without detections add nothing.

    Raises:
        CellDataError: an image cannot be read.
    """
    paths = entry_paths(input_dir, entries)
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
    predictor: CellPredictor | None,
    input_dir: str | os.PathLike | Mapping[str, Path],
    entries: Sequence[dict],
    *,
    formats: Sequence[str],
    fingerprint: dict[str, str],
    class_names: Sequence[str],
    output: str | os.PathLike | None = None,
    zip_output: bool = False,
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
    distribute: Distribute | None = None,
    keep_overlaps: bool = False,
) -> PredictionSummary:
    """Predict every image of an id map into the requested formats, streaming to disk.

    Each finished image is stored at once (see the module docstring); nothing but the current
    batch is held in memory. The main output (``output`` when ``coco`` is requested, else
    ``output_dir``) names the work folder (:func:`~cellseg_d2.inference.shards.work_dir_for`)
    and the skipped list (:func:`~cellseg_d2.inference.shards.skipped_list_path`). The outputs
    are claimed first (:func:`~cellseg_d2.inference.outputs.claim_outputs`: destinations and
    export names checked, lock held until the end) and temporary files of a killed run removed.

    Args:
        predictor: the model wrapper.
        input_dir: folder holding the ``file_name`` of every entry, or ``file_name -> path``
            (inputs from several folders, :func:`~cellseg_d2.inference.inputs.collect_inputs`).
        entries: checked id-map entries (``file_name``, ``id``, ``height``, ``width``).
        formats: any of :data:`~cellseg_d2.inference.export.EXPORT_FORMATS`.
        fingerprint: from :func:`~cellseg_d2.inference.shards.prediction_fingerprint`, stored
            with the shards.
        class_names: names of the 0-based classes (``DATASETS.CLASS_NAMES``); shards with
            other classes are refused.
        output: the submission file (``coco``).
        zip_output: write the submission as the zip CodaBench takes.
        output_dir: the folder of the other formats (``labels/``, ``geojson/``, ``cells.csv``).
        resume: continue the run whose shards are in the work folder, predicting only the
            images it has not finished (and those whose shards are bad).
        skip_bad: log, list and skip an unreadable image instead of stopping.
        progress: show a progress bar.
        distribute: predicts the images still to do in other processes instead of with
            ``predictor`` here (:mod:`~cellseg_d2.inference.predict_launch`, ``--num-gpus``);
            the claim, the work folder and the assembly stay in this process.
        keep_overlaps: the GeoJSON and the table hold every detection with its own mask
            instead of the label image's cells (``--keep-overlaps``, see
            :mod:`~cellseg_d2.inference.export`); must be the fingerprint's, so that
            ``--resume`` never mixes the two modes.

    Returns:
        The run's summary.

    Raises:
        CellDataError: an unreadable image without ``skip_bad`` (named; the finished images
            stay in the work folder for ``--resume``), a work folder that cannot be resumed, a
            destination that cannot be written, export names that collide, or a bad shard met
            during the assembly.
        OutputLockedError: another run is writing the same output.
    """
    if "coco" in formats and output is None:
        raise ValueError("the coco format needs an output file")
    if set(formats) - {"coco"} and output_dir is None:
        raise ValueError(f"formats {sorted(set(formats) - {'coco'})} need an output folder")
    if fingerprint.get("keep_overlaps", str(bool(keep_overlaps))) != str(bool(keep_overlaps)):
        raise ValueError("keep_overlaps differs from the fingerprint's")
    output = Path(output) if output is not None else None
    export_dir = Path(output_dir) if output_dir is not None else None
    main_output = output if "coco" in formats else export_dir
    with claim_outputs(entries, formats, output, export_dir):
        skipped_path = skipped_list_path(main_output)
        remove_stale_temps(run_files(entries, formats, output, export_dir, skipped_path))
        shards = PredictionShards(work_dir_for(main_output), fingerprint, resume)
        summary = PredictionSummary(images=len(entries), work_dir=shards.work_dir)
        suffixes = [".json", ".csv"] if "csv" in formats else [".json"]
        done = shards.finished(entries, suffixes, len(class_names)) if resume else set()
        todo = [entry for entry in entries if entry["id"] not in done]
        summary.resumed = len(entries) - len(todo)
        if summary.resumed:
            logger.info("Resuming: %d of %d images already done", summary.resumed, len(entries))
        job = ImagesJob(formats, export_dir, tuple(class_names), skip_bad, progress, keep_overlaps)
        if distribute is None:
            predict_entries(predictor, entry_paths(input_dir, todo), todo, shards, job, summary)
            predictor.warn_detection_cap(summary.predicted)
        else:
            distribute(todo, shards, job, summary)
        assemble_outputs(shards, entries, formats, len(class_names), output, zip_output, export_dir)
        if summary.skipped:
            with atomic_write(skipped_path, "w") as handle:
                handle.writelines(f"{name}\t{reason}\n" for name, reason in summary.skipped)
            logger.warning(
                "Skipped %d unreadable image(s), listed in %s; their finished neighbours stay "
                "in %s so that --resume after fixing them predicts only those",
                len(summary.skipped),
                skipped_path,
                shards.work_dir,
            )
        else:
            skipped_path.unlink(missing_ok=True)  # a list left by an earlier run no longer holds
            shards.remove()
            summary.work_dir = None
    return summary


@dataclass(frozen=True)
class ImagesJob:
    """What every image of a run is predicted into (picklable, for worker processes)."""

    formats: tuple[str, ...] | list[str]
    export_dir: Path | None
    class_names: tuple[str, ...]
    skip_bad: bool
    progress: bool
    keep_overlaps: bool = False


#: ``(todo entries, shards, job, summary)`` -> None: predicts the entries into the shards
#: elsewhere and adds what it did to the summary.
Distribute = Callable[[list[dict], PredictionShards, ImagesJob, PredictionSummary], None]


def predict_entries(
    predictor: CellPredictor,
    paths: Sequence[Path],
    entries: Sequence[dict],
    shards: PredictionShards,
    job: ImagesJob,
    summary: PredictionSummary,
) -> None:
    """Predict ``entries`` (files ``paths``) into their shards and per-image files, counting
    into ``summary``; the part of a run each process does.

    Raises:
        CellDataError: an unreadable image without ``job.skip_bad`` (named; finished images
            stay in the work folder for ``--resume``).
    """
    for index, image, detections in iter_predictions(predictor, paths, job.progress):
        entry = entries[index]
        if isinstance(image, CellDataError):
            if not job.skip_bad:
                raise CellDataError(
                    f"{image}\n  {summary.resumed + summary.predicted} finished image(s) are "
                    f"kept in {shards.work_dir}: replace or fix the file and rerun with "
                    "--resume, or pass --skip-bad to leave it out"
                )
            logger.warning("Skipping %s", image)
            summary.skipped.append((entry["file_name"], str(image)))
            continue
        _export_image(entry, image, detections, job, shards)
        summary.predicted += 1
        summary.detections += len(detections)


def _export_image(
    entry: dict,
    image: np.ndarray,
    detections: list[Detection],
    job: ImagesJob,
    shards: PredictionShards,
) -> None:
    """Write one image's per-image files and store its shards (COCO results last)."""
    csv_text = None
    if job.export_dir is not None:
        csv_text = write_image_exports(
            entry,
            image,
            detections,
            job.formats,
            job.export_dir,
            job.class_names,
            job.keep_overlaps,
        )
    results = (
        detections_to_results(detections, entry["id"], entry["height"], entry["width"])
        if "coco" in job.formats
        else []
    )
    shards.add(entry["id"], encode_results(results), csv_text)
