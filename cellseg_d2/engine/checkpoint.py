"""Checkpointing that survives a kill, and weight loading that explains offline failures."""

from __future__ import annotations

import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from fvcore.common.checkpoint import _IncompatibleKeys

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


# The layers whose shape depends on the number of classes in detectron2's R-CNN heads.
CLASS_LAYERS = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_head.predictor.",
)


def is_class_layer(key: str) -> bool:
    """Whether a state-dict key belongs to a class-specific layer (also under ``module.``)."""
    return key.removeprefix("module.").startswith(CLASS_LAYERS)


def _num_classes(model: torch.nn.Module) -> int:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return int(model.roi_heads.num_classes)


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

    def _load_model(self, checkpoint: dict[str, Any]) -> _IncompatibleKeys:
        """Load as detectron2 does, but start the class-specific layers afresh when the
        checkpoint was trained for another number of classes (e.g. COCO's 80).

        fvcore already skips tensors whose shape differs from the model's, so those layers keep
        the initialisation ``build_model`` gave them; this only replaces its one warning per
        tensor with a single line that says which layers and why. Shape mismatches anywhere else
        are still reported as detectron2 reports them (they point at a wrong config).
        """
        incompatible = super()._load_model(checkpoint)
        reinit = sorted(
            {
                key.rsplit(".", 1)[0]
                for key, *_ in incompatible.incorrect_shapes
                if is_class_layer(key)
            }
        )
        if reinit:
            incompatible.incorrect_shapes[:] = [
                item for item in incompatible.incorrect_shapes if not is_class_layer(item[0])
            ]
            # fvcore dropped those tensors before loading, so they also count as missing
            incompatible.missing_keys[:] = [
                key for key in incompatible.missing_keys if key.rsplit(".", 1)[0] not in reinit
            ]
            self.logger.info(
                "Re-initialised %s: the checkpoint's class layers are for another number of "
                "classes than MODEL.ROI_HEADS.NUM_CLASSES=%d, so they start from their "
                "initialisation; the other layers load as usual.",
                ", ".join(reinit),
                _num_classes(self.model),
            )
        return incompatible

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``last_checkpoint`` at ``last_filename_basename``, atomically."""
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as handle:
            handle.write(last_filename_basename)
