"""Checkpointing that survives a kill, and weight loading that explains offline failures."""

from __future__ import annotations

import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from ..data.io import atomic_write

__all__ = ["AtomicDetectionCheckpointer", "WeightsUnavailableError", "fetch_weights"]


class WeightsUnavailableError(RuntimeError):
    """``MODEL.WEIGHTS`` names a file or URL that cannot be read (e.g. an offline machine)."""


def fetch_weights(weights: str) -> str:
    """Return a local path for ``MODEL.WEIGHTS``, downloading (and caching) URLs once.

    Raises:
        WeightsUnavailableError: with the file named and the two ways forward, instead of the
            socket or HTTP traceback a download failure would otherwise show.
    """
    try:
        local = PathManager.get_local_path(weights)
    except Exception as exc:  # URLError, HTTPError, OSError, iopath errors
        raise WeightsUnavailableError(_weights_hint(weights, exc)) from exc
    if not os.path.isfile(local):
        raise WeightsUnavailableError(_weights_hint(weights, FileNotFoundError(local)))
    return local


def _weights_hint(weights: str, exc: BaseException) -> str:
    return (
        f"cannot read MODEL.WEIGHTS '{weights}': {type(exc).__name__}: {exc}\n"
        "  - offline? download the file elsewhere, copy it here and pass "
        "MODEL.WEIGHTS /path/to/file\n"
        "  - or train from random initialisation with "
        "configs/mask_rcnn_R_50_FPN_scratch_cells.yaml (GroupNorm, no weights needed)"
    )


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` whose files are never half-written.

    Each checkpoint and the ``last_checkpoint`` tag are written to a temporary name and renamed,
    so a kill during saving leaves the previous checkpoint and tag intact.

    NOTE: detectron2's ``BestCheckpointer`` saves through the same ``save``, which would move
    ``last_checkpoint`` to ``model_best.pth``; names in ``untagged_prefixes`` are saved without
    retagging, so ``--resume`` always continues from the newest periodic checkpoint.
    """

    untagged_prefixes: tuple[str, ...] = ("model_best",)

    def save(self, name: str, **kwargs: Any) -> None:
        """Save model and checkpointables as ``<save_dir>/<name>.pth`` atomically."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_write(save_file) as handle:
            torch.save(data, handle)
        if not name.startswith(self.untagged_prefixes):
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``last_checkpoint`` at ``last_filename_basename``, atomically."""
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as handle:
            handle.write(last_filename_basename)
