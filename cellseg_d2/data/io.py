"""Readers and writers for the cell dataset files.

One image reader serves training, evaluation and prediction, so every stage sees exactly the same
pixels; one mask reader turns a ``classK.tif`` file into integer instance ids. Writers are atomic:
they write to a temporary name in the destination folder and rename, so an interrupted run never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from cellseg_d2.data.tiff_header import tiff_header_problem
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import atomic_write

__all__ = [
    "MAX_PIXELS_ENV",
    "image_size",
    "read_any_image",
    "max_image_pixels",
    "read_image",
    "read_image_size",
    "read_instance_mask",
    "read_tiff",
    "to_bgr_image",
    "to_uint8",
    "write_tiff",
]

#: Environment variable that overrides :data:`DEFAULT_MAX_IMAGE_PIXELS` (0 = no limit).
MAX_PIXELS_ENV = "CELLSEG_MAX_IMAGE_PIXELS"
#: Largest image (height x width x pages) read by default: 2^28 px, e.g. 16384 x 16384. Beyond
#: it one decoded RGB image alone takes more than 0.75 GB, so a mistaken file is refused before
#: it fills the memory. The bytes decoded are capped at 8 per pixel of the cap (samples, image
#: depth and sample width counted; see :mod:`cellseg_d2.data.tiff_header`).
DEFAULT_MAX_IMAGE_PIXELS = 2**28


def max_image_pixels() -> int:
    """The largest image size in pixels the readers accept (0 = no limit).

    Read from ``$CELLSEG_MAX_IMAGE_PIXELS`` at each call, so a user can raise it for one run.

    Raises:
        CellDataError: the variable is not a non-negative integer.
    """
    value = os.environ.get(MAX_PIXELS_ENV, "")
    if not value.strip():
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise CellDataError(f"${MAX_PIXELS_ENV}={value!r}: expected a pixel count >= 0")
    return limit


def _check_header(path: Path, tif: tifffile.TiffFile, channel_pages: bool) -> None:
    """Refuse, from the header alone, a file :func:`tiff_header_problem` finds a problem with:
    above the pixel cap or its byte cap (samples, depth and sample width counted), multi-page
    (except 3 or 4 channel pages of an image), a volume, or too many samples per pixel.
    """
    problem = tiff_header_problem(tif, channel_pages, max_image_pixels(), MAX_PIXELS_ENV)
    if problem:
        raise CellDataError(f"{path}: {problem}")


def write_tiff(path: str | os.PathLike, array: np.ndarray, compression: str | None = None) -> None:
    """Write ``array`` as a TIFF atomically.

    Args:
        path: destination file.
        array: HxW (masks) or HxWxC (images; C=3 or 4 is written as RGB with alpha as extra sample).
        compression: e.g. ``"lzw"`` like the real images (needs imagecodecs), or None.
    """
    kwargs = {}
    if array.ndim == 3 and array.shape[2] in (3, 4):
        kwargs["photometric"] = "rgb"
        if array.shape[2] == 4:
            kwargs["extrasamples"] = ("unassalpha",)
    # NOTE: tifffile needs a named file or a seekable buffer; the handle of atomic_write has an
    # int name, so encode in memory first. metadata=None and no date tag: same array, same bytes.
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, compression=compression, metadata=None, **kwargs)
    with atomic_write(path) as handle:
        handle.write(buffer.getbuffer())


def read_tiff(path: str | os.PathLike, channel_pages: bool = False) -> np.ndarray:
    """Read a single-page TIFF, turning every decoding failure into a ``CellDataError``.

    The header is checked before any pixel is decoded: a file above :func:`max_image_pixels`
    (or its byte cap), with several pages, a volume or too many samples per pixel is refused
    (see :func:`~cellseg_d2.data.tiff_header.tiff_header_problem` for the rules).

    Args:
        path: the TIFF file.
        channel_pages: accept 3 or 4 same-size pages as the channels of one image, returned as
            a channel-first CxHxW array.

    Raises:
        CellDataError: the file is missing, truncated, not a TIFF, too large, multi-page, or uses
            a codec that cannot be decoded (LZW needs the ``imagecodecs`` package).
    """
    path = Path(path)
    if not path.is_file():
        raise CellDataError(f"{path}: file not found")
    try:
        with tifffile.TiffFile(path) as tif:
            _check_header(path, tif, channel_pages)
            if len(tif.pages) > 1:
                return np.stack([page.asarray() for page in tif.pages])
            return tif.pages.first.asarray()
    except CellDataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt input
        hint = ""
        if "imagecodecs" in str(exc):
            hint = " (install 'imagecodecs': LZW-compressed TIFFs need it)"
        raise CellDataError(f"{path}: unreadable TIFF: {exc}{hint}") from exc


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of a TIFF from its header, without decoding pixels.

    Raises:
        CellDataError: the file is missing, not a readable TIFF, or refused by the header checks
            of :func:`read_tiff` (too large, multi-page).
    """
    path = Path(path)
    if not path.is_file():
        raise CellDataError(f"{path}: file not found")
    try:
        with tifffile.TiffFile(path) as tif:
            _check_header(path, tif, channel_pages=True)
            page = tif.pages.first
            return int(page.imagelength), int(page.imagewidth)
    except CellDataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt input
        raise CellDataError(f"{path}: unreadable TIFF: {exc}") from exc


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale an image of any numeric dtype to uint8.

    The rule, chosen so that the same file always maps to the same pixels:
    - uint8 is returned unchanged;
    - other integer types are divided by their dtype's maximum when the data use more than 8
      bits (e.g. 16-bit scans), else cast directly (e.g. uint16 holding 0..255);
    - floats in [0, 1] are multiplied by 255; other floats are min-max stretched per image.
    NaNs become 0.
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.integer):
        peak = int(image.max()) if image.size else 0
        if peak <= 255 and int(image.min()) >= 0:
            return image.astype(np.uint8)
        info = np.iinfo(image.dtype)
        scaled = (image.astype(np.float64) - min(info.min, 0)) / (info.max - min(info.min, 0))
        return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)
    data = np.nan_to_num(image.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 1.0)
    if low >= 0.0 and high <= 1.0:
        return np.clip(np.rint(data * 255), 0, 255).astype(np.uint8)
    if high == low:
        return np.zeros(data.shape, np.uint8)
    return np.clip(np.rint((data - low) / (high - low) * 255), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a microscopy image (TIFF, PNG, JPEG) as HxWx3 uint8 BGR, detectron2's
    ``INPUT.FORMAT``.

    Grayscale (HxW or HxWx1) is repeated to three channels; an alpha channel (the 4th channel of
    RGBA) is dropped, with a warning-free pass when it is constant and an error otherwise, since a
    varying alpha carries information we would silently lose. Non-uint8 data follow
    :func:`to_uint8`. Channel-first stacks (3xHxW or 4xHxW, also as 3 or 4 TIFF pages) are moved
    to channel-last.

    Raises:
        CellDataError: unreadable file, an unsupported shape, or one refused by :func:`read_tiff`.
    """
    return to_bgr_image(read_any_image(path), path)


#: Pillow modes kept as they are; others are converted to RGB (palette, CMYK, YCbCr, ...).
_KEPT_MODES = ("L", "RGB", "RGBA", "I;16", "I", "F")


def read_any_image(path: str | os.PathLike) -> np.ndarray:
    """Pixels of a PNG/JPEG/BMP (Pillow) or TIFF (tifffile) file, as stored (no rescaling).

    Why here: the importers, the slide readers and prediction read PNG/JPEG with the same
    pixel cap and mode rules as TIFFs.

    Raises:
        CellDataError: unreadable file, or one above the pixel cap of the project's reader.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_tiff(path, channel_pages=True)
    try:
        with Image.open(path) as image:
            limit = max_image_pixels()
            if limit and image.width * image.height > limit:
                raise CellDataError(
                    f"{path}: {image.height}x{image.width} px exceeds the limit of {limit} pixels"
                )
            if image.mode == "LA" or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
            elif image.mode not in _KEPT_MODES:
                image = image.convert("RGB")
            return np.asarray(image)
    except CellDataError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt or unknown files
        raise CellDataError(f"{path}: unreadable image: {exc}") from exc


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of a TIFF, PNG or JPEG file from its header, without decoding pixels.

    Raises:
        CellDataError: missing or unreadable file.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_image_size(path)
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise CellDataError(f"{path}: file not found") from None
    except Exception as exc:  # Pillow raises many types for corrupt or unknown files
        raise CellDataError(f"{path}: unreadable image: {exc}") from exc


def to_bgr_image(image: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Pixels as a file stores them -> HxWx3 uint8 BGR, by the rules of :func:`read_image`.

    Why apart from the reader: images read another way (Pillow for PNG/JPEG, see
    :mod:`cellseg_d2.data.slide`) get exactly the same channel and dtype rules.

    Args:
        image: HxW, HxWx1/3/4 (RGB order) or 1/3/4xHxW pixels of any numeric dtype.
        path: the file they came from, named in errors.

    Raises:
        CellDataError: an unsupported shape, or a varying alpha channel.
    """
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[2] not in (1, 3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(to_uint8(image)[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        if image.shape[2] == 4:
            alpha = image[:, :, 3]
            if alpha.size and alpha.min() != alpha.max():
                raise CellDataError(
                    f"{path}: the alpha channel varies; flatten the image to RGB before use"
                )
            image = image[:, :, :3]
        image = to_uint8(image)[:, :, ::-1]
    else:
        raise CellDataError(
            f"{path}: unsupported image shape {image.shape}; expected HxW, HxWx3 or HxWx4"
        )
    return np.ascontiguousarray(image)


def read_instance_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a ``classK.tif`` instance-label image as HxW int64 instance ids (0 = background).

    Masks may be stored as float (the real data are float64) or any integer type; ids are
    arbitrary and need not be contiguous. Ids beyond int64 (uint64 values >= 2^63, huge floats)
    are renumbered 1..n in increasing order, which keeps every instance distinct.

    Raises:
        CellDataError: unreadable file, not 2-D, or values that are NaN, infinite, negative or
            non-integer.
    """
    labels = read_tiff(path)
    if labels.ndim == 3 and labels.shape[2] == 1:
        labels = labels[:, :, 0]
    if labels.ndim != 2:
        raise CellDataError(f"{path}: a mask must be a 2-D label image, got shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all():
            raise CellDataError(f"{path}: mask holds NaN or infinite values")
        if (labels < 0).any():
            raise CellDataError(f"{path}: mask holds negative values")
        if (labels != np.floor(labels)).any():
            raise CellDataError(f"{path}: mask holds non-integer values; expected instance ids")
        return _to_int64_ids(labels)
    if labels.dtype == bool:
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise CellDataError(f"{path}: unsupported mask dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.signedinteger) and (labels < 0).any():
        raise CellDataError(f"{path}: mask holds negative values")
    return _to_int64_ids(labels)


def _to_int64_ids(labels: np.ndarray) -> np.ndarray:
    """Cast non-negative integer-valued labels to int64, renumbering ids that do not fit.

    NOTE: a plain cast would wrap uint64 values >= 2^63 to negative ids (and turn huge floats
    into one undefined value), merging or breaking instances silently.
    """
    if labels.size == 0 or labels.max() <= np.iinfo(np.int64).max // 2:
        return labels.astype(np.int64)
    values, inverse = np.unique(labels, return_inverse=True)
    ids = inverse.reshape(labels.shape).astype(np.int64)
    return ids if values[0] == 0 else ids + 1
