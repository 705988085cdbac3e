"""The geometric augmentations cell training adds to detectron2's: quarter-turn rotations and a
vertical flip done in numpy (lossless), and the resize by ``INPUT.SCALE``.

Why apart from the mapper: they are detectron2 ``Transform``/``Augmentation`` classes that any
detectron2 pipeline can use on their own; the mapper only chooses them from the config.
"""

from __future__ import annotations

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from PIL import Image

from cellseg_d2.config.scale import input_scale

__all__ = [
    "NumpyVFlipTransform",
    "RandomRotation90",
    "RandomVFlip",
    "ResizeByFactor",
    "Rot90Transform",
    "build_resize",
]


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


class ResizeByFactor(T.Augmentation):
    """Resize by ``factor`` (times ``U(1 - jitter, 1 + jitter)`` when ``jitter`` > 0).

    Why not detectron2's ``ResizeShortestEdge``: that brings every image's short side to one
    length, so in a data set of mixed image sizes (dsb2018: 256 px crops next to 1040 px fields
    of view) the cells of each image end up at a different size. A common factor keeps the
    cells of every image at the size ``INPUT.SCALE`` chose for them. The result is detectron2's
    ``ResizeTransform`` (bilinear), which the mapper moves instance crops through exactly.
    """

    def __init__(self, factor: float, jitter: float = 0.0) -> None:
        """Args:
        factor: the resize factor (> 0).
        jitter: relative half-width of the per-sample factor's range (0..1).
        """
        super().__init__()
        if not factor > 0 or not 0 <= jitter < 1:
            raise ValueError(f"factor must be > 0 and jitter in [0, 1), got {factor}, {jitter}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        """Draw the factor (numpy's global RNG) and resize to ``round(side x factor)``."""
        factor = self.factor
        if self.jitter > 0:
            factor *= np.random.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        h, w = image.shape[:2]
        new_h, new_w = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
        if (new_h, new_w) == (h, w):
            return T.NoOpTransform()
        return T.ResizeTransform(h, w, new_h, new_w, Image.BILINEAR)


def build_resize(cfg: CfgNode, is_train: bool) -> T.Augmentation:
    """The resize every image gets before the model: by ``INPUT.SCALE`` when it is on (with
    ``INPUT.SCALE_JITTER`` in training), else detectron2's short-edge resize from
    ``INPUT.MIN_SIZE_*``/``MAX_SIZE_*`` (what ``detection_utils.build_augmentation`` builds).

    Why one function: the training mapper, the evaluation loader and the predictor must resize
    alike, or the model sees cells at another size than it learned.

    Raises:
        ConfigError: see :func:`~cellseg_d2.config.scale.input_scale`.
    """
    scale = input_scale(cfg)
    if scale > 0:
        return ResizeByFactor(scale, float(cfg.INPUT.SCALE_JITTER) if is_train else 0.0)
    if is_train:
        return T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    return T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
