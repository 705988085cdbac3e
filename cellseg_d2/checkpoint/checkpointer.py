"""Checkpointing that survives a kill, and weight loading that cannot run code or mislead.

Weights are data, but ``.pkl`` files and arbitrary ``torch.load`` calls unpickle, and unpickling
runs whatever code the file names. So (see README, "Trust"):

- ``MODEL.WEIGHTS`` is checked and fetched by :mod:`.weights_url` (https only, no ``..`` in a
  URL, ``detectron2://`` only for names in detectron2's zoo catalogue, downloads into the private
  cache :func:`weights_cache_dir` under a name derived there).
- ``.pth`` and other torch files load with ``torch.load(weights_only=True)``: tensors and plain
  containers only; a file that needs more is refused with its name.
- ``.pkl`` files (detectron2's pickled format) load only from detectron2's own model zoo
  (``detectron2://...`` or ``https://dl.fbaipublicfiles.com/detectron2/...``), or when the user
  passes ``MODEL.CELLSEG.TRUST_PICKLE True`` on the command line (which also lifts the
  ``weights_only`` restriction).
- Weights that leave model tensors unset (not found, or of another shape) are an error where a
  model is used as it is (prediction, evaluation: ``strict_fit``) and a warning where training
  starts from them.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys

from cellseg_d2.checkpoint.weights_url import (
    WeightsUnavailableError,
    fetch_weights,
    is_zoo_weights,
    weights_cache_dir,
)
from cellseg_d2.errors import ConfigError
from cellseg_d2.utils.files import atomic_write

__all__ = [
    "AtomicDetectionCheckpointer",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "check_output_dir",
    "fetch_weights",
    "remove_stale_temp_files",
    "weights_cache_dir",
]

logger = logging.getLogger(__name__)

TRUST_KEY = "MODEL.CELLSEG.TRUST_PICKLE"

# NOTE: the names atomic_write gives its temporary files (".<name>.<random>.tmp"), for the
# checkpoint files only: a kill during a save leaves one of these behind.
_STALE_TEMP = re.compile(r"^\.(?:.+\.pth|last_checkpoint)\.[A-Za-z0-9_]+\.tmp$")
_CHECKPOINT_FILE = re.compile(r"^(?:last_checkpoint|model_.+\.pth)$")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary checkpoint files an interrupted save left in ``folder``.

    A kill during ``torch.save`` leaves a hidden ``.model_XXXX.pth.<random>.tmp`` as large as a
    checkpoint; nothing would ever remove it. Call this only where no other process is saving.

    Returns:
        The removed files (each is logged with its size).
    """
    removed: list[Path] = []
    if not os.path.isdir(folder):
        return removed
    for entry in os.scandir(folder):
        if _STALE_TEMP.match(entry.name) and entry.is_file(follow_symlinks=False):
            size = entry.stat(follow_symlinks=False).st_size
            os.unlink(entry.path)
            logger.warning(
                "Removed %s (%d bytes), left by an interrupted checkpoint write", entry.path, size
            )
            removed.append(Path(entry.path))
    return removed


def check_output_dir(output_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuse an ``OUTPUT_DIR`` that cannot be used, or that holds checkpoints unless the user
    said what to do.

    Without ``--resume`` training starts at iteration 0 and its saves replace the old run's
    ``model_*.pth`` and ``last_checkpoint`` one by one: hours of training silently lost.

    Raises:
        ConfigError: ``output_dir`` is a file (or lies under one) or is not writable, or holds
            a checkpoint and neither ``resume`` nor ``overwrite`` is given.
    """
    _check_folder_usable(output_dir)
    if resume or overwrite or not os.path.isdir(output_dir):
        return
    found = sorted(name for name in os.listdir(output_dir) if _CHECKPOINT_FILE.match(name))
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise ConfigError(
            f"OUTPUT_DIR {output_dir} already holds checkpoints ({shown}): pass --resume to "
            "continue that run, or --overwrite to train anew and replace them (or choose "
            "another OUTPUT_DIR)"
        )


def _check_folder_usable(output_dir: str) -> None:
    """Refuse an ``OUTPUT_DIR`` that is a file, lies under a file or cannot be written."""
    path = Path(output_dir or ".").absolute()
    existing = next(p for p in (path, *path.parents) if os.path.lexists(p))
    if not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise ConfigError(
            f"OUTPUT_DIR {output_dir} {where}, not a folder: choose another OUTPUT_DIR"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"OUTPUT_DIR {output_dir} cannot be written ({existing} is not writable): choose "
            "another OUTPUT_DIR"
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


class WeightsMismatchError(WeightsUnavailableError):
    """``MODEL.WEIGHTS`` is readable but does not fit the model: using it as it is would predict
    with randomly initialised tensors."""


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

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        trust_pickle: bool = False,
        strict_fit: bool = True,
        save_to_disk: bool | None = None,
        **checkpointables: Any,
    ) -> None:
        """Like ``DetectionCheckpointer``; removes stale temporary files from ``save_dir``.

        Args:
            model: the model to save and load.
            save_dir: the checkpoint folder (``OUTPUT_DIR``); empty for load-only use.
            trust_pickle: ``MODEL.CELLSEG.TRUST_PICKLE``: unpickle weights from anywhere.
            strict_fit: refuse weights that leave any model tensor unset (prediction and
                evaluation); False only warns (a training start, where a backbone-only
                checkpoint is normal and the class layers may be for another class count).
            save_to_disk: as detectron2 (default: only the main process saves).
            **checkpointables: objects whose ``state_dict`` is saved with the model.
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.trust_pickle = trust_pickle
        self.strict_fit = strict_fit
        self._source = ""
        if self.save_dir and self.save_to_disk:
            remove_stale_temp_files(self.save_dir)

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Load ``path`` (a local file or an allowed URL) through :func:`fetch_weights`.

        The original name is kept while loading, so ``_load_file`` knows whether a ``.pkl``
        came from detectron2's model zoo and errors name what the user wrote.

        Raises:
            WeightsUnavailableError: a refused or unreadable name or file.
            WeightsMismatchError: with ``strict_fit``, weights that do not fit the model.
        """
        if not path:
            return super().load(path, *args, **kwargs)
        base, sep, query = path.partition("?")  # detectron2's "?matching_heuristics=True"
        self._source = base
        try:
            return super().load(fetch_weights(path) + sep + query, *args, **kwargs)
        finally:
            self._source = ""

    def _load_file(self, filename: str) -> dict[str, Any]:
        """detectron2's loader, with pickles refused unless trusted (see the module docstring).

        Raises:
            WeightsUnavailableError: a ``.pkl`` from outside the zoo without the opt-in, or a
                file ``weights_only`` refuses or cannot read, naming the file.
        """
        source = self._source or filename
        trusted = self.trust_pickle or is_zoo_weights(source)
        if filename.endswith(".pkl") and not trusted:
            raise WeightsUnavailableError(
                f"refusing to unpickle MODEL.WEIGHTS '{source}': .pkl files can run code when "
                "loaded and this one is not from detectron2's model zoo. If you trust where it "
                f"came from, add {TRUST_KEY} True to the command line"
            )
        try:
            return super()._load_file(filename)
        except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
            restricted = not (self.trust_pickle or filename.endswith(".pkl"))
            raise WeightsUnavailableError(_refusal(source, exc, restricted)) from exc

    def _torch_load(self, f: str) -> dict[str, Any]:
        """``torch.load`` of tensors and plain containers only, unless pickles are trusted."""
        return torch.load(f, map_location="cpu", weights_only=not self.trust_pickle)

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
        """Load as detectron2 does, then check how well the weights fit the model.

        fvcore skips tensors whose shape differs from the model's, so those keep the
        initialisation ``build_model`` gave them, as do tensors the checkpoint lacks. The class
        layers of a checkpoint trained for another number of classes (e.g. COCO's 80) are the
        expected case when training starts: one line says they start afresh.

        Raises:
            WeightsMismatchError: with ``strict_fit``, any model tensor not found in the
                checkpoint or of another shape there (the class layers included), naming the
                file and the counts.
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
        self._check_fit(incompatible, reinit)
        if reinit:
            self.logger.info(
                "Re-initialised %s: the checkpoint's class layers are for another number of "
                "classes than MODEL.ROI_HEADS.NUM_CLASSES=%d, so they start from their "
                "initialisation; the other layers load as usual.",
                ", ".join(reinit),
                _num_classes(self.model),
            )
        return incompatible

    def _check_fit(self, incompatible: _IncompatibleKeys, reinit: list[str]) -> None:
        """Count the model tensors the weights left unset; raise or warn (see ``strict_fit``)."""
        wrong = {key: (tuple(ckpt), tuple(own)) for key, ckpt, own in incompatible.incorrect_shapes}
        not_found = [key for key in incompatible.missing_keys if key not in wrong]
        if not (not_found or wrong or (reinit and self.strict_fit)):
            return
        source = self._source or "the checkpoint"
        counts = (
            f"{len(not_found)} of {len(self.model.state_dict())} model tensors not found in "
            f"it, {len(wrong)} with another shape"
        )
        examples = [f"{key} (not found)" for key in not_found[:2]]
        examples += [f"{key} (file {ckpt}, model {own})" for key, (ckpt, own) in wrong.items()]
        detail = f" (e.g. {', '.join(examples[:3])})" if examples else ""
        if not self.strict_fit:
            logger.warning(
                "MODEL.WEIGHTS '%s' fits the model only partly: %s%s; those start from their "
                "initialisation (expected for a backbone-only checkpoint such as ImageNet "
                "weights).",
                source,
                counts,
                detail,
            )
            return
        if reinit:
            counts += (
                f"; its class layers ({', '.join(reinit)}) are for another number of classes "
                f"than MODEL.ROI_HEADS.NUM_CLASSES={_num_classes(self.model)}"
            )
        raise WeightsMismatchError(
            f"MODEL.WEIGHTS '{source}' does not fit the model: {counts}{detail}. Used as it is, "
            "those tensors would be random. Check that the config is the one the weights were "
            "trained with (MODEL.RESNETS.DEPTH, MODEL.ROI_HEADS.NUM_CLASSES, "
            "DATASETS.CLASS_NAMES, ...), or name the right weights file"
        )

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``last_checkpoint`` at ``last_filename_basename``, atomically."""
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as handle:
            handle.write(last_filename_basename)


def _refusal(source: str, exc: BaseException, restricted: bool) -> str:
    """The message for a weights file that was refused (``restricted``: loaded with
    ``weights_only``) or could not be read."""
    if not restricted or not isinstance(exc, pickle.UnpicklingError):
        return f"cannot read MODEL.WEIGHTS '{source}': not a readable checkpoint ({exc})"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if "unsupported" in line.lower()), "")
    detail = f" ({detail})" if detail else ""
    return (
        f"refusing MODEL.WEIGHTS '{source}': it holds more than tensors, and loading it could "
        f"run code{detail}. If you trust where it came from, add {TRUST_KEY} True to the "
        "command line"
    )
