"""One prediction run over whatever ``--input`` names: the body of ``tools/predict.py``.

Why one function: the tool stays a parser, and everything a run decides (images vs slides, the
id map given or assigned, the eager model or an exported one, one process or many) is decided
here in one order, with every check done before the model is built:

1. destinations (:func:`~cellseg_d2.inference.outputs.check_output_paths`);
2. inputs (:func:`~cellseg_d2.inference.inputs.collect_inputs`): images are checked against the
   id map when one is given, else numbered in sorted name order and the numbering is written
   beside the main output (``<output>.image_ids.json``, or ``image_ids.json`` in the export
   folder); slides need a slide format (GeoJSON/CSV/labels) and an export folder;
3. the images through :func:`~cellseg_d2.inference.predict.predict_to_files` (streamed,
   resumable; on several processes through :mod:`~cellseg_d2.inference.predict_launch`);
4. the slides through :func:`~cellseg_d2.inference.predict_slides.predict_slides` (on several
   processes through :mod:`~cellseg_d2.inference.slide_ranks`, chunk by chunk), under the
   export folder's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode

from cellseg_d2.data.validate import check_test_images
from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.exported import METADATA_FILE, ExportedPredictor
from cellseg_d2.inference.inputs import assign_image_ids, collect_inputs, write_assigned_ids
from cellseg_d2.inference.outputs import check_output_paths, claim_outputs
from cellseg_d2.inference.predict import MAX_ID_MAP_BYTES, PredictionSummary, predict_to_files
from cellseg_d2.inference.predict_launch import distributed_images
from cellseg_d2.inference.predict_slides import (
    check_slide_formats,
    predict_slides,
    start_slide_worker_server,
)
from cellseg_d2.inference.predictor import CellPredictor
from cellseg_d2.inference.shards import prediction_fingerprint, run_fingerprint
from cellseg_d2.inference.slide_predict import SlideSummary
from cellseg_d2.inference.slide_ranks import distributed_slides
from cellseg_d2.utils.files import check_file_size, sha256_file
from cellseg_d2.utils.lock import hold_lock

__all__ = ["IMAGE_IDS_NAME", "PredictionRun", "RunReport", "assigned_ids_path", "run_prediction"]

logger = logging.getLogger(__name__)

#: Assigned ids in an export folder (beside a submission: ``<name>.image_ids.json``).
IMAGE_IDS_NAME = "image_ids.json"


@dataclass(frozen=True)
class PredictionRun:
    """What one ``tools/predict.py`` call asks for (its flags, checked by the parser)."""

    source: Path
    formats: tuple[str, ...]
    output: Path | None = None
    output_dir: Path | None = None
    id_map: Path | None = None
    zip_output: bool = False
    resume: bool = False
    skip_bad: bool = False
    tta: bool = False
    keep_overlaps: bool = False
    pixel_size: float | None = None
    tissue: str = "auto"
    progress: bool = True
    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"


@dataclass
class RunReport:
    """What a run did: the images' summary (None without images) and one summary per slide."""

    images: PredictionSummary | None = None
    slides: list[SlideSummary] = field(default_factory=list)
    ids_file: Path | None = None


def assigned_ids_path(run: PredictionRun) -> Path:
    """Where assigned image ids go: beside the submission, else in the export folder."""
    if "coco" in run.formats and run.output is not None:
        return run.output.with_name(run.output.name + "." + IMAGE_IDS_NAME)
    assert run.output_dir is not None
    return run.output_dir / IMAGE_IDS_NAME


def exported_fingerprint(
    predictor: ExportedPredictor, formats: Sequence[str], entries: Sequence[dict], keep: bool
) -> dict[str, str]:
    """:func:`~cellseg_d2.inference.shards.prediction_fingerprint` for an exported model: the
    model file and metadata hashes instead of the config and weights."""
    folder = predictor.model_dir
    model_file = folder / str(predictor.metadata["model_file"])
    model = {  # the model keys of prediction_fingerprint, so a resume check reads both alike
        "score_thresh": repr(float(predictor.score_threshold)),
        "mask_thresh": repr(float(predictor.mask_threshold)),
        "weights": f"sha256:{sha256_file(model_file)}",
        "config": f"sha256:{sha256_file(folder / METADATA_FILE)}",
    }
    return run_fingerprint(model, False, formats, entries, keep)


def _image_entries(run: PredictionRun, images: dict[str, Path]) -> tuple[list[dict], Path | None]:
    """The id-map entries of the images: checked against ``run.id_map``, else assigned."""
    if run.id_map is not None:
        check_file_size(run.id_map, MAX_ID_MAP_BYTES, "id map")
        return check_test_images(run.id_map, list(images.values())), None
    entries = assign_image_ids(images)
    return entries, assigned_ids_path(run)


def _check_destinations(run: PredictionRun, has_images: bool, slides: list[Path]) -> list[str]:
    """Refuse, before any work, a run whose inputs cannot go where it writes; return the
    formats the slides are written in."""
    check_output_paths(run.output, run.output_dir)
    slide_formats = check_slide_formats(run.formats, slides)
    if slides and run.output_dir is None:
        raise CellDataError(f"{slides[0]}: whole slides need --output-dir")
    if not has_images and "coco" in run.formats:
        raise CellDataError(
            f"{run.source}: the coco submission is for images read whole, and there are none; "
            "drop coco from --format"
        )
    return slide_formats


def run_prediction(run: PredictionRun, cfg: CfgNode | None, model_dir: Path | None) -> RunReport:
    """Predict every input of ``run`` with the eager model of ``cfg`` or the exported model in
    ``model_dir`` (exactly one of them).

    Raises:
        CellDataError: bad input, named (see the module docstring); also an exported model with
            slides or test-time augmentation, or several processes with an exported model.
    """
    inputs = collect_inputs(run.source)
    for message in inputs.ignored:
        logger.warning(message)
    slide_formats = _check_destinations(run, bool(inputs.images), inputs.slides)
    exported = ExportedPredictor(model_dir) if model_dir is not None else None
    if exported is not None and (run.tta or inputs.slides or run.num_gpus * run.num_machines > 1):
        raise CellDataError(
            f"{model_dir}: an exported model predicts images in one process without --tta; "
            "use --config-file for slides, --tta or --num-gpus"
        )
    report = RunReport()
    predictor: Any = exported
    if inputs.images:
        entries, report.ids_file = _image_entries(run, inputs.images)
        with claim_outputs(entries, run.formats, run.output, run.output_dir):
            if report.ids_file is not None:
                write_assigned_ids(entries, report.ids_file)
                logger.info("Image ids assigned in name order: %s", report.ids_file)
            report.images, predictor = _predict_images(run, cfg, predictor, inputs.images, entries)
    if inputs.slides:
        assert run.output_dir is not None and cfg is not None
        with hold_lock(run.output_dir):
            if run.num_gpus * run.num_machines > 1:
                report.slides = distributed_slides(
                    cfg,
                    run.tta,
                    inputs.slides,
                    run.output_dir,
                    formats=slide_formats,
                    pixel_size=run.pixel_size,
                    tissue=run.tissue,
                    resume=run.resume,
                    progress=run.progress,
                    num_gpus=run.num_gpus,
                    num_machines=run.num_machines,
                    machine_rank=run.machine_rank,
                    dist_url=run.dist_url,
                )
                return report
            if predictor is None:
                start_slide_worker_server(cfg)  # imports torch while the model is built
                predictor = CellPredictor(cfg, tta=run.tta)
            report.slides = predict_slides(
                cfg,
                predictor,
                inputs.slides,
                run.output_dir,
                formats=slide_formats,
                pixel_size=run.pixel_size,
                tissue=run.tissue,
                resume=run.resume,
                progress=run.progress,
            )
    return report


def _predict_images(
    run: PredictionRun,
    cfg: CfgNode | None,
    exported: ExportedPredictor | None,
    images: dict[str, Path],
    entries: list[dict],
) -> tuple[PredictionSummary, Any]:
    """The images part: in this process (eager or exported) or on several processes. Returns
    the summary and the predictor built here (None when the ranks built their own)."""
    if exported is not None:
        fingerprint = exported_fingerprint(exported, run.formats, entries, run.keep_overlaps)
        class_names: Sequence[str] = exported.class_names
    else:
        assert cfg is not None
        fingerprint = prediction_fingerprint(cfg, run.tta, run.formats, entries, run.keep_overlaps)
        class_names = cfg.DATASETS.CLASS_NAMES
    predictor: Any = exported
    distribute = None
    if exported is None and run.num_gpus * run.num_machines > 1:
        distribute = distributed_images(
            cfg,
            run.tta,
            images,
            fingerprint,
            num_gpus=run.num_gpus,
            num_machines=run.num_machines,
            machine_rank=run.machine_rank,
            dist_url=run.dist_url,
        )
    elif predictor is None:
        predictor = CellPredictor(cfg, tta=run.tta)
    summary = predict_to_files(
        predictor,
        images,
        entries,
        formats=list(run.formats),
        fingerprint=fingerprint,
        class_names=class_names,
        output=run.output,
        zip_output=run.zip_output,
        output_dir=run.output_dir,
        resume=run.resume,
        skip_bad=run.skip_bad,
        progress=run.progress,
        distribute=distribute,
        keep_overlaps=run.keep_overlaps,
    )
    return summary, predictor
