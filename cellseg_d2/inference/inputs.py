"""What ``predict.py --input`` names: a folder, one file, or a list file of images and slides.

Why here: the competition path reads a folder of ``.tif`` files checked against an id map; the
people who segment cells for a living hand the tool folders of PNG/JPEG/TIFF crops and whole
slides, with no id map. This module turns any of those into two ordered lists (images read
whole, slides read tile by tile), and, without an id map, gives the images ids in sorted name
order and records them in a file beside the output, so the outputs can be joined back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cellseg_d2.data.io import image_size
from cellseg_d2.data.slide import IMAGE_SUFFIXES, is_slide_file
from cellseg_d2.data.slide_tiff import tiff_layout
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import atomic_write

__all__ = [
    "LIST_SUFFIXES",
    "PredictionInputs",
    "assign_image_ids",
    "collect_inputs",
    "is_whole_slide",
    "write_assigned_ids",
]

#: A ``--input`` with one of these endings is a list of paths, one per line.
LIST_SUFFIXES: tuple[str, ...] = (".txt", ".lst", ".list")
#: Largest list file read (a path per line: a million inputs).
_MAX_LIST_BYTES = 256 << 20
_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class PredictionInputs:
    """The inputs of one prediction run, each list sorted by file name.

    Attributes:
        images: file name -> path of the images read whole (the names are unique).
        slides: the whole-slide files, read tile by tile.
        ignored: messages about files of a folder that are neither.
    """

    images: dict[str, Path] = field(default_factory=dict)
    slides: list[Path] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def is_whole_slide(path: str | os.PathLike) -> bool:
    """Whether a file is read as a whole slide (tile by tile) rather than whole.

    Slide formats (``.svs``, ``.ndpi``, ``.mrxs``, DICOM, ...) always are; a TIFF is when it is
    a pyramid (more than one level) or larger than the image reader's pixel cap, so the
    competition's flat TIFFs keep their path; PNG/JPEG never are.

    Raises:
        CellDataError: a TIFF whose header cannot be read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _TIFF_SUFFIXES:
        return is_slide_file(path) and suffix not in IMAGE_SUFFIXES
    layout = tiff_layout(path)
    return layout.levels > 1 or layout.over_cap


def _known(path: Path) -> bool:
    """Whether a file name is an image or slide format the tool reads."""
    return path.suffix.lower() in IMAGE_SUFFIXES or is_slide_file(path)


def _list_file_paths(list_file: Path) -> list[Path]:
    """The paths of a list file: one per line, relative to the list's folder; ``#`` comments
    and blank lines skipped."""
    if list_file.stat().st_size > _MAX_LIST_BYTES:
        raise CellDataError(f"{list_file}: list file larger than {_MAX_LIST_BYTES} bytes")
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CellDataError(f"{list_file}: unreadable list file: {exc}") from exc
    paths = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(text).expanduser()
        path = path if path.is_absolute() else list_file.parent / path
        if not path.is_file():
            raise CellDataError(f"{list_file}, line {number}: {path}: file not found")
        if not _known(path):
            raise CellDataError(
                f"{list_file}, line {number}: {path}: not an image or slide format the tool "
                f"reads ({', '.join(sorted(IMAGE_SUFFIXES))} or a whole-slide format)"
            )
        paths.append(path)
    return paths


def collect_inputs(source: str | os.PathLike) -> PredictionInputs:
    """Sort what ``--input`` names into images and slides.

    Args:
        source: a folder (its visible image and slide files, not recursive), one image or slide
            file, or a list file (:data:`LIST_SUFFIXES`).

    Raises:
        CellDataError: the source is missing or empty, a listed file is missing or of an unknown
            format, two images share a file name (outputs are named after it), or a TIFF header
            is unreadable.
    """
    source = Path(source)
    inputs = PredictionInputs()
    if source.is_dir():
        paths = []
        for path in sorted(source.iterdir(), key=lambda p: p.name):
            if path.name.startswith(".") or not path.is_file():
                continue
            if _known(path):
                paths.append(path)
            else:
                inputs.ignored.append(f"{path}: not an image or slide format; ignored")
    elif source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        paths = _list_file_paths(source)
    elif source.is_file():
        if not _known(source):
            raise CellDataError(f"{source}: not an image or slide format the tool reads")
        paths = [source]
    else:
        raise CellDataError(f"{source}: input not found")
    for path in sorted(paths, key=lambda p: (p.name, str(p))):
        if is_whole_slide(path):
            inputs.slides.append(path)
        elif path.name in inputs.images:
            raise CellDataError(
                f"{path} and {inputs.images[path.name]} share the file name {path.name!r}; "
                "outputs are named after it: rename one"
            )
        else:
            inputs.images[path.name] = path
    if not inputs.images and not inputs.slides:
        raise CellDataError(f"{source}: no image or slide files to predict")
    return inputs


def assign_image_ids(images: dict[str, Path]) -> list[dict]:
    """Id-map entries for images that came without one: ids 1..n in sorted name order, sizes
    from the file headers (no pixels decoded).

    Raises:
        CellDataError: an unreadable image header.
    """
    entries = []
    for image_id, name in enumerate(sorted(images), 1):
        height, width = image_size(images[name])
        entries.append({"file_name": name, "id": image_id, "height": height, "width": width})
    return entries


def write_assigned_ids(entries: list[dict], path: str | os.PathLike) -> Path:
    """Write assigned ids in the id-map format (``test_image_name_to_ids.json``'s), atomically,
    so the outputs' image ids can be joined back to file names."""
    path = Path(path)
    with atomic_write(path, "w") as handle:
        json.dump(entries, handle, indent=1)
        handle.write("\n")
    return path
