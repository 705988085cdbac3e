"""What a TIFF header says about the cost and shape of its pixels, checked before decoding.

The reader (:func:`cellseg_d2.data.io.read_tiff`) decodes only files this module finds nothing
wrong with. Height x width alone is not the cost of a file: samples per pixel (up to 65535),
an image depth (the SGI volume tag) and the bytes of each sample multiply it, so a 1024 x 1024
file with 512 samples decodes to 512 MB. The checks here use the header alone.

NOTE: this module imports nothing from the package (the reader raises the errors), so
:mod:`cellseg_d2.data.io` can use it without an import cycle.
"""

from __future__ import annotations

import tifffile

__all__ = ["MAX_BYTES_PER_PIXEL", "decoded_bytes", "tiff_header_problem"]

#: Decoded bytes allowed per pixel of the pixel cap: 8 is the widest pixel of a valid file
#: (a float64 mask, or 16-bit RGBA), so the byte cap never refuses what the pixel cap admits
#: in a usual format.
MAX_BYTES_PER_PIXEL = 8


def decoded_bytes(pages: list) -> int:
    """Bytes the pages decode to: height x width x depth x samples x bytes per sample, summed.

    Read from each page's header (tifffile's ``nbytes``), nothing is decoded.
    """
    return sum(int(page.nbytes) for page in pages)


def _multi_page_problem(count: int, channel_pages: bool) -> str:
    """The message for a multi-page file the readers do not take."""
    rule = "; images may have 3 or 4 same-size pages (channels)" if channel_pages else ""
    return (
        f"multi-page TIFF with {count} pages; only single-page files are read{rule}. "
        "Save one 2-D (or RGB/RGBA) image per file"
    )


def tiff_header_problem(
    tif: tifffile.TiffFile, channel_pages: bool, max_pixels: int, env: str
) -> str | None:
    """Why a TIFF must not be decoded, from its header alone; None when it may be.

    The rules, in order: height x width x pages within ``max_pixels``; one page, or with
    ``channel_pages`` (images) 3 or 4 pages of the same 2-D size (how ImageJ saves an RGB
    stack; silently reading page 1 of a z-stack would train on the wrong pixels); decoded bytes
    of all pages within ``max_pixels`` x :data:`MAX_BYTES_PER_PIXEL`; no image depth (volumes
    are not read); at most 4 samples per pixel for an image (gray, gray + alpha, RGB, RGBA) and
    1 for anything else (a mask).

    Args:
        tif: the open file.
        channel_pages: the file is an image (3 or 4 pages may be its channels).
        max_pixels: the pixel cap, 0 for none (then bytes are not capped either).
        env: the environment variable that raises the cap, named in the message.

    Returns:
        The problem, to follow the file name in an error; None when the file may be decoded.
    """
    pages = tif.pages
    count = len(pages)
    first = pages.first
    height, width = int(first.imagelength), int(first.imagewidth)
    hint = f"set ${env} to a larger count (0 = no limit) to read it"
    if max_pixels and height * width * count > max_pixels:
        return (
            f"image of {height}x{width} px x {count} page(s) exceeds the limit of "
            f"{max_pixels} pixels; {hint}"
        )
    if count > 1 and not (channel_pages and count in (3, 4)):
        return _multi_page_problem(count, channel_pages)
    read = [pages[index] for index in range(count)]
    if count > 1 and {tuple(page.shape) for page in read} != {(height, width)}:
        return _multi_page_problem(count, channel_pages)
    total = decoded_bytes(read)
    if max_pixels and total > max_pixels * MAX_BYTES_PER_PIXEL:
        return (
            f"decodes to {total} bytes ({first.samplesperpixel} sample(s) of "
            f"{first.bitspersample} bits per pixel, depth {first.imagedepth}, {count} page(s)), "
            f"more than the {max_pixels * MAX_BYTES_PER_PIXEL} bytes allowed "
            f"({MAX_BYTES_PER_PIXEL} per pixel of the limit of {max_pixels} pixels); {hint}"
        )
    if int(first.imagedepth) != 1:
        return f"a volume (image depth {first.imagedepth}); only 2-D images are read"
    samples = int(first.samplesperpixel)
    if samples > (4 if channel_pages else 1):
        allowed = "an image has 1 to 4 (gray, RGB, RGBA)" if channel_pages else "a mask (2-D) has 1"
        return f"{samples} samples per pixel; {allowed}"
    return None
