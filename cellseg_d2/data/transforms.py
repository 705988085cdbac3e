"""The lossless geometric augmentations cell training adds to detectron2's: quarter-turn
rotations and a vertical flip done in numpy.

Why apart from the mapper: they are detectron2 ``Transform``/``Augmentation`` classes that any
detectron2 pipeline can use on their own; the mapper only chooses them from the config.
"""

from __future__ import annotations

import numpy as np
from detectron2.data import transforms as T

__all__ = ["NumpyVFlipTransform", "RandomRotation90", "RandomVFlip", "Rot90Transform"]


class Rot90Transform(T.Transform):
    """Rotate by ``k`` quarter turns counter-clockwise (``np.rot90`` semantics): lossless."""

    def __init__(self, height: int, width: int, k: int) -> None:
        """Args:
        height, width: size of the image before rotation.
        k: number of quarter turns, 0..3.
        """
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """Rotate an HxW or HxWxC array (image or mask stack)."""
        return np.ascontiguousarray(np.rot90(img, self.k, axes=(0, 1)))

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Rotate Nx2 (x, y) points the same way as the pixels."""
        h, w = self.height, self.width
        x, y = coords[:, 0].copy(), coords[:, 1].copy()
        for _ in range(self.k % 4):
            x, y = y, w - x
            h, w = w, h
        return np.stack([x, y], axis=1)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Masks rotate exactly like images."""
        return self.apply_image(segmentation)

    def inverse(self) -> T.Transform:
        """The rotation by the remaining quarter turns."""
        k = self.k % 4
        h, w = (self.width, self.height) if k % 2 else (self.height, self.width)
        return Rot90Transform(h, w, (4 - k) % 4)


class RandomRotation90(T.Augmentation):
    """With probability ``prob``, rotate by a random 90, 180 or 270 degrees."""

    def __init__(self, prob: float = 0.5) -> None:
        """Args:
        prob: probability of rotating at all.
        """
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        """Draw the rotation from numpy's global RNG (seeded per worker by detectron2)."""
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        h, w = image.shape[:2]
        return Rot90Transform(h, w, int(np.random.randint(1, 4)))


class NumpyVFlipTransform(T.VFlipTransform):
    """fvcore's vertical flip, done in numpy as its horizontal flip already is.

    NOTE: fvcore flips vertically through ``torch.from_numpy``, and detectron2's resize hands it a
    read-only array (``np.asarray`` of a PIL image), so torch warns that it cannot protect it.
    numpy reads the array as it is; the result is a contiguous, writable copy, as fvcore's is.
    """

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """Flip an HxW, HxWxC or NxHxWxC array upside down."""
        return np.ascontiguousarray(np.flip(img, axis=0 if img.ndim <= 3 else -3))


class RandomVFlip(T.Augmentation):
    """With probability ``prob``, flip vertically: detectron2's ``RandomFlip(vertical=True)``
    (the same draw), with :class:`NumpyVFlipTransform`."""

    def __init__(self, prob: float = 0.5) -> None:
        """Args:
        prob: probability of flipping.
        """
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        """Draw from numpy's global RNG (seeded per worker by detectron2)."""
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        return NumpyVFlipTransform(image.shape[0])
