"""Synthetic H&E-like cell images in exactly the layout of the real (MoNuSAC-style) dataset.

Why this exists: the tests, the quick-start demo and CI need a dataset that

* has the same files, dtypes and quirks as the real export (RGBA LZW images with a constant
  alpha channel, one float64 instance-label mask per *present* class, instance ids that are
  non-contiguous and run across the classes of an image, a test split with a name-to-id map),
* is small and byte-for-byte reproducible from a seed, and
* has four classes (or any number, ``num_classes``) that a Mask R-CNN can tell apart after a
  few minutes of CPU training.

Modules, each importing only the ones above it:

- :mod:`~cellseg_d2.data.synthetic.shapes`: what each class looks like (outline and stain).
- :mod:`~cellseg_d2.data.synthetic.image`: one image and its labels, painted in memory.
- :mod:`~cellseg_d2.data.synthetic.dataset`: a whole dataset written in the real layout.
"""

from cellseg_d2.data.synthetic.dataset import (
    DENSE_EVERY,
    MIN_IMAGE_SIZE,
    generate_synthetic_dataset,
)
from cellseg_d2.data.synthetic.image import (
    DENSE_MIN_CELLS,
    MAX_CLASSES,
    MIN_CELL_PIXELS,
    synthesize_image,
)
from cellseg_d2.data.synthetic.shapes import CLASS_NAMES

__all__ = [
    "CLASS_NAMES",
    "DENSE_EVERY",
    "DENSE_MIN_CELLS",
    "MAX_CLASSES",
    "MIN_CELL_PIXELS",
    "MIN_IMAGE_SIZE",
    "generate_synthetic_dataset",
    "synthesize_image",
]
