"""Where a prediction run writes, checked before any work, and owned while it runs.

A run over thousands of images takes hours; a problem with where its results go must stop it
before the first image, not after the last: an ``--output`` that is a folder, two images whose
per-image exports would share one file name (``cell.tif`` and ``cell.tiff``; ``Cell.tif`` and
``cell.tif`` on a case-insensitive file system), or another run writing the same output
(:func:`claim_outputs`, which holds :func:`~cellseg_d2.utils.lock.hold_lock` for the run). Under
that lock the temporary files a killed run left behind are removed (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from cellseg_d2.errors import CellDataError
from cellseg_d2.inference.export import export_paths
from cellseg_d2.utils.lock import hold_lock

__all__ = [
    "CSV_FILE_NAME",
    "check_export_names",
    "check_output_paths",
    "claim_outputs",
    "remove_stale_temps",
    "run_files",
    "staging_path",
]

logger = logging.getLogger(__name__)

#: The per-cell table of the ``csv`` format, in the export folder.
CSV_FILE_NAME = "cells.csv"


def _first_non_folder(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a folder, or None."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def check_output_paths(output: Path | None, output_dir: Path | None) -> None:
    """Refuse destinations that cannot be written, before any work.

    Args:
        output: the submission file (``coco``), or None.
        output_dir: the export folder (other formats), or None.

    Raises:
        CellDataError: ``output`` is an existing folder, ``output_dir`` an existing file, one
            of their parents is a file, or both name the same path.
    """
    if output is not None and output_dir is not None and output.resolve() == output_dir.resolve():
        raise CellDataError(f"{output}: --output and --output-dir name the same path")
    for path, kind in ((output, "file"), (output_dir, "folder")):
        if path is None:
            continue
        blocker = _first_non_folder(path)
        if blocker is not None:
            raise CellDataError(f"{path}: cannot write there, {blocker} is a file, not a folder")
        if kind == "file" and path.is_dir():
            raise CellDataError(f"{path}: is a folder; --output names the submission file")
        if kind == "folder" and path.exists() and not path.is_dir():
            raise CellDataError(f"{path}: is a file; --output-dir names a folder")


def _name_key(stem: str) -> str:
    """What a case-insensitive, normalising file system (macOS, Windows) sees of a name."""
    return unicodedata.normalize("NFC", stem).casefold()


def check_export_names(entries: Sequence[dict]) -> None:
    """Refuse images whose per-image exports would get the same file names.

    Exports are named after the image's stem (:func:`~cellseg_d2.inference.export.export_paths`),
    so ``cell.tif`` and ``cell.tiff`` would write one ``labels/cell_instances.tif``, and
    ``Cell.tif`` and ``cell.tif`` one file on a case-insensitive file system: one image's results
    would silently replace the other's.

    Raises:
        CellDataError: naming both images and the shared file name.
    """
    seen: dict[str, str] = {}
    for entry in entries:
        name = entry["file_name"]
        key = _name_key(Path(name).stem)
        if key in seen:
            stem = Path(seen[key]).stem
            raise CellDataError(
                f"{seen[key]} and {name} would write the same export files "
                f"(labels/{stem}_instances.tif, geojson/{stem}.geojson; names are compared "
                "ignoring case, as macOS and Windows do): rename one of them"
            )
        seen[key] = name


def staging_path(path: Path) -> Path:
    """Where an assembled output is written and checked before it replaces ``path``."""
    return path.with_name(f".{path.name}.assembling{path.suffix}")


def run_files(
    entries: Sequence[dict],
    formats: Sequence[str],
    output: Path | None,
    export_dir: Path | None,
    skipped_list: Path,
) -> list[Path]:
    """Every file a run writes outside its work folder (submission, table, per-image exports,
    skipped list; the staging files of the assembly)."""
    files = [skipped_list]
    if "coco" in formats and output is not None:
        files += [output, staging_path(output)]
    if export_dir is not None:
        if "csv" in formats:
            files += [export_dir / CSV_FILE_NAME, staging_path(export_dir / CSV_FILE_NAME)]
        for entry in entries:
            paths = export_paths(export_dir, entry["file_name"])
            if "labels" in formats:
                files += [paths["instances"], paths["classes"]]
            if "geojson" in formats:
                files.append(paths["geojson"])
    return files


def _temp_base(name: str) -> str | None:
    """The final file name a temporary file of ``atomic_write`` (``.<name>.<random>.tmp``) or
    of the assembly (``.<name>.assembling<suffix>``) stands for, or None."""
    if not name.startswith("."):
        return None
    if name.endswith(".tmp"):
        base, dot, _random = name[1:-4].rpartition(".")
        return base if dot else None
    base, marker, _suffix = name[1:].rpartition(".assembling")
    return base if marker else None


def remove_stale_temps(files: Iterable[Path]) -> int:
    """Remove the temporary files that a killed run left beside ``files``; return how many.

    NOTE: call it only while holding the outputs' lock: a running writer's temporary files look
    the same. Each folder is listed once, whatever the number of files.
    """
    wanted: dict[Path, set[str]] = defaultdict(set)
    for path in files:
        wanted[path.parent].add(path.name)
    removed = 0
    for folder, names in wanted.items():
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for item in os.scandir(folder):
                if _temp_base(item.name) in names and item.is_file(follow_symlinks=False):
                    os.unlink(item.path)
                    removed += 1
    if removed:
        logger.info("Removed %d temporary file(s) left by an interrupted run", removed)
    return removed


@contextlib.contextmanager
def claim_outputs(
    entries: Sequence[dict],
    formats: Sequence[str],
    output: Path | None,
    export_dir: Path | None,
) -> Iterator[None]:
    """Check a run's destinations and own them for the ``with`` block.

    Checks :func:`check_output_paths` and, for per-image exports, :func:`check_export_names`,
    then holds the lock of the submission file and of the export folder (each that the formats
    use). Re-entrant in one thread, so a tool can claim before building the model and
    :func:`~cellseg_d2.inference.predict.predict_to_files` claim again.

    Raises:
        CellDataError: a destination or a name collision problem.
        OutputLockedError: another run writes one of these outputs.
    """
    output = output if "coco" in formats else None
    export_dir = export_dir if set(formats) - {"coco"} else None
    check_output_paths(output, export_dir)
    if set(formats) & {"labels", "geojson"}:
        check_export_names(entries)
    with contextlib.ExitStack() as stack:
        for target in (output, export_dir):
            if target is not None:
                stack.enter_context(hold_lock(target))
        yield
