"""Prediction on several GPUs (or CPU processes) and machines, through detectron2's ``launch``.

Why this shape: the streamed run (:func:`~cellseg_d2.inference.predict.predict_to_files`)
already stores every finished image as its own shard in a work folder and assembles the outputs
from the shards at the end. So more processes need no second runtime and no gathering of
results: the launching process claims the outputs, opens the work folder and decides what is
left to do (the same ordered list for everyone); detectron2's ``launch`` (the one training uses:
NCCL on GPUs, gloo on CPU) starts the ranks, rank ``r`` of ``n`` predicts entries ``r, r+n,
...`` into the shared work folder and writes a small report; after a barrier the launching
process of machine 0 assembles the outputs. A rerun with ``--resume`` skips every finished shard,
whichever rank wrote it. With several machines the work folder must be on a shared file system.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from detectron2.config import CfgNode
from detectron2.engine import launch
from detectron2.utils import comm

from cellseg_d2.errors import CellDataError, CellSegError
from cellseg_d2.inference.predict import (
    Distribute,
    ImagesJob,
    PredictionSummary,
    entry_paths,
    predict_entries,
)
from cellseg_d2.inference.predictor import CellPredictor
from cellseg_d2.inference.shards import PredictionShards
from cellseg_d2.utils.files import atomic_write, parse_json

__all__ = ["REPORT_NAME", "distributed_images", "rank_entries", "read_rank_report"]

logger = logging.getLogger(__name__)

#: Each rank's report in the work folder (hidden: never taken for a shard).
REPORT_NAME = ".rank-{rank}.report.json"
_REPORT_KEYS = frozenset({"predicted", "detections", "skipped", "error"})


def rank_entries(entries: Sequence[dict], rank: int, world_size: int) -> list[dict]:
    """The entries rank ``rank`` of ``world_size`` predicts: every ``world_size``-th one from
    ``rank`` (the ranks together cover every entry once, and neighbours in name order, which
    tend to be alike in size, spread over the ranks)."""
    return list(entries[rank::world_size])


def distributed_images(
    cfg: CfgNode,
    tta: bool,
    images: str | os.PathLike | Mapping[str, Path],
    fingerprint: dict[str, str],
    *,
    num_gpus: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
) -> Distribute:
    """A ``distribute`` for :func:`~cellseg_d2.inference.predict.predict_to_files` that runs
    the images still to do on ``num_gpus`` processes per machine.

    Args:
        cfg: the finished prediction config (each rank builds its own predictor from it).
        tta: test-time augmentation.
        images: the input folder, or ``file_name -> path``.
        fingerprint: the run's fingerprint (the ranks open the work folder with it).
        num_gpus: processes per machine (GPUs; on CPU, processes sharing the cores).
        num_machines, machine_rank, dist_url: as detectron2's ``launch``.

    Raises (from the returned function):
        CellDataError: a rank stopped on bad input (its message, e.g. the unreadable image).
    """

    def distribute(
        todo: list[dict], shards: PredictionShards, job: ImagesJob, summary: PredictionSummary
    ) -> None:
        world_size = num_gpus * num_machines
        for rank in range(world_size):
            (shards.work_dir / REPORT_NAME.format(rank=rank)).unlink(missing_ok=True)
        launch(
            _predict_rank,
            num_gpus,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=(cfg, tta, images, todo, str(shards.work_dir), fingerprint, job),
        )
        errors = []
        for rank in range(world_size):
            report = read_rank_report(
                shards.work_dir / REPORT_NAME.format(rank=rank), rank, _REPORT_KEYS
            )
            summary.predicted += report["predicted"]
            summary.detections += report["detections"]
            summary.skipped.extend(tuple(item) for item in report["skipped"])
            if report["error"]:
                errors.append(f"rank {rank}: {report['error']}")
        if errors:
            raise CellDataError("\n".join(errors))
        logger.info(
            "%d process(es) predicted %d image(s) into %s",
            world_size,
            summary.predicted,
            shards.work_dir,
        )

    return distribute


def read_rank_report(path: Path, rank: int, keys: frozenset[str], kept: str = "images") -> dict:
    """A rank's report at ``path``; a missing or malformed one is an error naming the file.

    Why shared: image ranks and slide ranks leave the same kind of report (what they did, an
    error) for the launching process, and both must fail the same clear way without one.

    Args:
        path: the report file.
        rank: whose it is (for the message).
        keys: the keys a report of this kind holds (exactly).
        kept: what a rerun with ``--resume`` keeps, for the message.

    Raises:
        CellDataError: no report, unreadable JSON, or other keys.
    """
    try:
        report = parse_json(path.read_bytes(), str(path))
    except OSError as exc:
        raise CellDataError(
            f"{path}: rank {rank} left no report ({exc}); its finished {kept} are kept, rerun "
            "with --resume"
        ) from exc
    if not isinstance(report, dict) or set(report) != keys:
        raise CellDataError(f"{path}: not a rank report")
    return report


def _predict_rank(
    cfg: CfgNode,
    tta: bool,
    images: str | os.PathLike | Mapping[str, Path],
    todo: list[dict],
    work_dir: str,
    fingerprint: dict[str, str],
    job: ImagesJob,
) -> None:
    """One rank: predict its share into the work folder, write its report, wait for all."""
    rank, world_size = comm.get_rank(), comm.get_world_size()
    if not cfg.MODEL.DEVICE.startswith("cuda"):
        # CPU ranks share the cores instead of each taking all of them (CPU results depend on
        # the thread count, so they equal a one-process run only at the same count).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    mine = rank_entries(todo, rank, world_size)
    summary = PredictionSummary(images=len(mine))
    error = None
    try:
        predictor = CellPredictor(cfg, tta=tta)
        shards = PredictionShards(Path(work_dir), fingerprint, resume=True)
        job = dataclasses.replace(job, progress=job.progress and comm.is_main_process())
        predict_entries(predictor, entry_paths(images, mine), mine, shards, job, summary)
    except CellSegError as exc:  # reported to the launching process, which exits 2
        error = str(exc)
    report = {
        "predicted": summary.predicted,
        "detections": summary.detections,
        "skipped": [list(item) for item in summary.skipped],
        "error": error,
    }
    with atomic_write(Path(work_dir) / REPORT_NAME.format(rank=rank), "w") as handle:
        json.dump(report, handle)
    comm.synchronize()  # every rank done before machine 0 assembles
