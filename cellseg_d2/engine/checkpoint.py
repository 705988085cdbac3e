"""Checkpointing that survives a kill, and weight loading that cannot run code.

Weights are data, but ``.pkl`` files and arbitrary ``torch.load`` calls unpickle, and unpickling
runs whatever code the file names. So (see README, "Trust"):

- ``.pth`` and other torch files load with ``torch.load(weights_only=True)``: tensors and plain
  containers only; a file that needs more is refused with its name.
- ``.pkl`` files (detectron2's pickled format) load only from detectron2's own model zoo
  (``detectron2://...`` or ``https://dl.fbaipublicfiles.com/detectron2/...``), or when the user
  passes ``MODEL.CELLSEG.TRUST_PICKLE True`` on the command line (which also lifts the
  ``weights_only`` restriction).
- URLs are fetched only over ``https://`` (or as ``detectron2://`` zoo names), into the private
  per-user cache :func:`weights_cache_dir`, never iopath's world-writable ``/tmp`` fallback.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import stat
from pathlib import Path
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from fvcore.common.checkpoint import _IncompatibleKeys

from cellseg_d2.utils.files import atomic_write

from ..errors import CellSegError, ConfigError

__all__ = [
    "AtomicDetectionCheckpointer",
    "WeightsUnavailableError",
    "check_output_dir",
    "fetch_weights",
    "remove_stale_temp_files",
    "weights_cache_dir",
]

logger = logging.getLogger(__name__)

#: Where detectron2's own model zoo lives; ``.pkl`` files from here are trusted.
ZOO_PREFIXES: tuple[str, ...] = ("detectron2://", "https://dl.fbaipublicfiles.com/detectron2/")
#: The only URL schemes weights are downloaded from.
ALLOWED_URL_PREFIXES: tuple[str, ...] = ("https://", "detectron2://")
TRUST_KEY = "MODEL.CELLSEG.TRUST_PICKLE"

# NOTE: the names atomic_write gives its temporary files (".<name>.<random>.tmp"), for the
# checkpoint files only: a kill during a save leaves one of these behind.
_STALE_TEMP = re.compile(r"^\.(?:.+\.pth|last_checkpoint)\.[A-Za-z0-9_]+\.tmp$")
_CHECKPOINT_FILE = re.compile(r"^(?:last_checkpoint|model_.+\.pth)$")


class WeightsUnavailableError(CellSegError, RuntimeError):
    """``MODEL.WEIGHTS`` names a file or URL that cannot be read (e.g. an offline machine) or that
    is refused because loading it could run code."""


def weights_cache_dir() -> Path:
    """The private download cache: ``$XDG_CACHE_HOME/cellseg_d2`` (``~/.cache/cellseg_d2``).

    Created with mode 0700; a folder owned by someone else is refused, and one of ours that
    others can read or write is made private again. A shared cache would let another user
    replace a file we later load.

    Raises:
        WeightsUnavailableError: the folder cannot be created, is not ours, or is not writable.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    folder = Path(base).expanduser() / "cellseg_d2"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode):
            raise OSError("not a folder")
        if info.st_uid != os.getuid():
            raise OSError(f"owned by uid {info.st_uid}, not by this user")
        if info.st_mode & 0o077:
            folder.chmod(0o700)
        if not os.access(folder, os.W_OK):
            raise OSError("not writable")
    except OSError as exc:
        raise WeightsUnavailableError(
            f"weights cache {folder} cannot be used: {exc}; set XDG_CACHE_HOME to a private "
            "folder of yours"
        ) from exc
    return folder


def fetch_weights(weights: str) -> str:
    """Return a local path for ``MODEL.WEIGHTS``, downloading (and caching) URLs once.

    Only ``https://`` URLs and ``detectron2://`` zoo names are downloaded, into
    :func:`weights_cache_dir`; ``http://``, ``ftp://``, ``file://`` and other schemes are refused.

    Raises:
        WeightsUnavailableError: with the file named and the two ways forward, instead of the
            socket or HTTP traceback a download failure would otherwise show.
    """
    if "://" in weights and not weights.startswith(ALLOWED_URL_PREFIXES):
        scheme = weights.split("://", 1)[0]
        raise WeightsUnavailableError(
            _weights_hint(
                weights,
                f"{scheme}:// is refused: weights are downloaded only over https:// "
                "(or as detectron2:// model-zoo names)",
            )
        )
    try:
        if "://" in weights:
            local = PathManager.get_local_path(weights, cache_dir=str(weights_cache_dir()))
        else:
            local = PathManager.get_local_path(weights)
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # URLError, HTTPError, OSError, iopath errors
        raise WeightsUnavailableError(
            _weights_hint(weights, f"{type(exc).__name__}: {exc}")
        ) from exc
    if not os.path.isfile(local):
        raise WeightsUnavailableError(_weights_hint(weights, f"FileNotFoundError: {local}"))
    return local


def _weights_hint(weights: str, reason: str) -> str:
    return (
        f"cannot read MODEL.WEIGHTS '{weights}': {reason}\n"
        "  - offline? download the file elsewhere, copy it here and pass "
        "MODEL.WEIGHTS /path/to/file\n"
        "  - or train from random initialisation with "
        "configs/mask_rcnn_R_50_FPN_scratch_cells.yaml (GroupNorm, no weights needed)"
    )


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
    """Refuse to train into a folder that holds checkpoints unless the user said what to do.

    Without ``--resume`` training starts at iteration 0 and its saves replace the old run's
    ``model_*.pth`` and ``last_checkpoint`` one by one: hours of training silently lost.

    Raises:
        ConfigError: ``output_dir`` holds a checkpoint and neither ``resume`` nor ``overwrite``.
    """
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

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        trust_pickle: bool = False,
        save_to_disk: bool | None = None,
        **checkpointables: Any,
    ) -> None:
        """Like ``DetectionCheckpointer``; removes stale temporary files from ``save_dir``.

        Args:
            model: the model to save and load.
            save_dir: the checkpoint folder (``OUTPUT_DIR``); empty for load-only use.
            trust_pickle: ``MODEL.CELLSEG.TRUST_PICKLE``: unpickle weights from anywhere.
            save_to_disk: as detectron2 (default: only the main process saves).
            **checkpointables: objects whose ``state_dict`` is saved with the model.
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.trust_pickle = trust_pickle
        self._source = ""
        if self.save_dir and self.save_to_disk:
            remove_stale_temp_files(self.save_dir)

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Load ``path`` (a local file or an allowed URL) through :func:`fetch_weights`.

        The original name is kept while loading, so ``_load_file`` knows whether a ``.pkl``
        came from detectron2's model zoo.
        """
        if not path:
            return super().load(path, *args, **kwargs)
        base, sep, query = path.partition("?")  # detectron2's "?matching_heuristics=True"
        self._source = base
        try:
            return super().load(fetch_weights(base) + sep + query, *args, **kwargs)
        finally:
            self._source = ""

    def _load_file(self, filename: str) -> dict[str, Any]:
        """detectron2's loader, with pickles refused unless trusted (see the module docstring).

        Raises:
            WeightsUnavailableError: a ``.pkl`` from outside the zoo without the opt-in, or a
                file ``weights_only`` refuses or cannot read, naming the file.
        """
        source = self._source or filename
        trusted = self.trust_pickle or source.startswith(ZOO_PREFIXES)
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
