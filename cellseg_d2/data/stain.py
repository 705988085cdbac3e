"""Stain and colour augmentation for stained tissue (H&E): image-only detectron2 augmentations.

Why: H&E slides differ from lab to lab and scanner to scanner in how much haematoxylin and eosin
the tissue took up and how the scanner renders it; a model trained on one site's colours loses
cells on another's. The field's answer (Tellez et al. 2018/2019, HistomicsTK, tiatoolbox's
``StainAugmentor``) is to jitter the stain concentrations: colour deconvolution into the
haematoxylin, eosin and DAB channels (Ruifrok and Johnston's HED basis, scikit-image's
``rgb_from_hed``), each concentration scaled by ``alpha ~ U(1 - sigma, 1 + sigma)`` and shifted by
``beta ~ U(-bias, bias)``, and back to RGB. Brightness, contrast, saturation and hue jitter come
on top, from detectron2's own ``RandomBrightness``/``RandomContrast``/``RandomSaturation`` and an
HSV hue shift.

Every transform here is a detectron2 ``ColorTransform`` or ``BlendTransform``: coordinates and
segmentations pass unchanged, so masks and boxes are never touched, and the mapper skips them
when it moves instance crops. Draws come from numpy's global RNG, like every detectron2
augmentation, so a seeded worker reproduces them. Images are HxWx3 uint8 in ``INPUT.FORMAT``
(BGR by default); the HED basis and the saturation weights are defined on RGB, so each transform
knows the channel order.

NOTE: the HED step computes optical densities with scikit-image's conventions (``rgb2hed``'s
floor of 1e-6 on intensities) but in natural-log units, the units Tellez et al. and tiatoolbox
state their bias ranges in (scikit-image's ``rgb2hed`` divides them by ``-ln(1e-6)``, about
13.8), and it does not clip negative concentrations, so ``alpha = 1, beta = 0`` gives back the
very same image. Deconvolution, jitter and reconvolution fold into one 3x3 matrix and an offset
per image, so a 512x512 image costs a few milliseconds, not scikit-image's float64 round trip.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from skimage.color import hed_from_rgb, rgb_from_hed

from cellseg_d2.errors import ConfigError

__all__ = [
    "HedJitterTransform",
    "RandomBrightnessFloat32",
    "RandomContrastFloat32",
    "RandomHedJitter",
    "RandomHue",
    "RandomSaturationInFormat",
    "build_color_augmentations",
    "hed_jitter",
    "shift_hue",
]

#: scikit-image's floor on intensities before the logarithm (``separate_stains``).
_INTENSITY_FLOOR = 1e-6
#: Optical density (natural log) of each uint8 intensity, with that floor.
_OD_OF_UINT8 = (-np.log(np.maximum(np.arange(256) / 255.0, _INTENSITY_FLOOR))).astype(np.float32)
_HED_FROM_RGB = np.asarray(hed_from_rgb, dtype=np.float64)
_RGB_FROM_HED = np.asarray(rgb_from_hed, dtype=np.float64)
_FORMATS = ("BGR", "RGB")


def _check_format(image_format: str) -> None:
    """Refuse a channel order the colour maths does not know."""
    if image_format not in _FORMATS:
        raise ValueError(f"image format must be one of {_FORMATS}, got {image_format!r}")


def hed_jitter(
    image: np.ndarray, alpha: np.ndarray, beta: np.ndarray, image_format: str = "RGB"
) -> np.ndarray:
    """Scale and shift the haematoxylin, eosin and DAB concentrations of a uint8 image.

    Why one function: the transform, the tests and anyone previewing the augmentation call the
    same arithmetic. ``concentrations = OD @ hed_from_rgb``, ``c' = alpha * c + beta``,
    ``OD' = c' @ rgb_from_hed`` (scikit-image's row-vector convention), folded into
    ``OD' = OD @ M + offset``.

    Args:
        image: HxWx3 uint8 in ``image_format``.
        alpha: three factors (H, E, DAB).
        beta: three shifts (H, E, DAB) in natural-log optical density.
        image_format: ``"RGB"`` or ``"BGR"``.

    Returns:
        The jittered image, HxWx3 uint8 in the same channel order.
    """
    _check_format(image_format)
    alpha = np.asarray(alpha, dtype=np.float64).reshape(3)
    beta = np.asarray(beta, dtype=np.float64).reshape(3)
    matrix = (_HED_FROM_RGB * alpha[None, :]) @ _RGB_FROM_HED
    offset = beta @ _RGB_FROM_HED
    if image_format == "BGR":  # the same maths with the channel axis reversed
        matrix, offset = matrix[::-1, ::-1], offset[::-1]
    density = np.take(_OD_OF_UINT8, image)  # HxWx3 float32, one table lookup per value
    # exp(-(OD @ M + offset)) * 255 == exp(OD @ -M + (ln 255 - offset)): OpenCV's per-pixel
    # affine colour transform takes it in one pass (numpy's batched 3x3 matmul is far slower).
    affine = np.hstack([-matrix.T, (np.log(255.0) - offset)[:, None]]).astype(np.float32)
    out = cv2.transform(np.ascontiguousarray(density), affine)
    np.exp(out, out=out)
    np.clip(out, 0.0, 255.0, out=out)
    return np.rint(out, out=out).astype(np.uint8)


def shift_hue(image: np.ndarray, shift: float, image_format: str = "RGB") -> np.ndarray:
    """Rotate the hue of a uint8 image by ``shift`` turns of the colour circle (-0.5..0.5).

    Why OpenCV's HSV: it is the usual definition of hue (torchvision's and albumentations'
    hue jitter use it too) and its uint8 path is fast. A shift that rounds to zero returns the
    image unchanged, since the uint8 HSV round trip itself is slightly lossy.
    """
    _check_format(image_format)
    steps = int(round(shift * 180.0)) % 180  # OpenCV's uint8 hue runs over 0..179
    if steps == 0:
        return image
    to_hsv, from_hsv = (
        (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)
        if image_format == "RGB"
        else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
    )
    hsv = cv2.cvtColor(np.ascontiguousarray(image), to_hsv)
    hue = hsv[:, :, 0].astype(np.int16) + steps
    hsv[:, :, 0] = (hue % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, from_hsv)


class HedJitterTransform(T.ColorTransform):
    """detectron2's image-only ``ColorTransform`` doing :func:`hed_jitter` with fixed draws."""

    def __init__(self, alpha: np.ndarray, beta: np.ndarray, image_format: str = "BGR") -> None:
        """Args: as :func:`hed_jitter` (the draws of one sample)."""
        _check_format(image_format)
        op = functools.partial(hed_jitter, alpha=alpha, beta=beta, image_format=image_format)
        super().__init__(op)
        self.alpha, self.beta, self.image_format = alpha, beta, image_format


class RandomHedJitter(T.Augmentation):
    """Draw per-stain ``alpha ~ U(1 - sigma, 1 + sigma)`` and ``beta ~ U(-bias, bias)``."""

    def __init__(self, sigma: float, bias: float, image_format: str = "BGR") -> None:
        """Args:
        sigma: half-width of the concentration factor's range around 1.
        bias: half-width of the concentration shift's range around 0 (natural-log OD).
        image_format: channel order of the images it will see.
        """
        super().__init__()
        _check_format(image_format)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        """Draw from numpy's global RNG (seeded per worker by detectron2)."""
        alpha = np.random.uniform(1.0 - self.sigma, 1.0 + self.sigma, size=3)
        beta = np.random.uniform(-self.bias, self.bias, size=3)
        return HedJitterTransform(alpha, beta, self.image_format)


def _float32_blend(tfm: T.Transform) -> T.Transform:
    """Make a detectron2 ``BlendTransform`` compute in float32.

    NOTE: detectron2 draws its blend weights as numpy float64 scalars (and saturation's grey as
    a float64 image); under numpy 2's promotion rules they turn the whole blend into float64,
    which makes it several times slower for the same uint8 result.
    """
    if isinstance(tfm, T.BlendTransform):
        tfm.src_weight, tfm.dst_weight = float(tfm.src_weight), float(tfm.dst_weight)
        src = tfm.src_image
        tfm.src_image = src.astype(np.float32) if isinstance(src, np.ndarray) else float(src)
    return tfm


class RandomBrightnessFloat32(T.RandomBrightness):
    """detectron2's ``RandomBrightness``, blending in float32 (see :func:`_float32_blend`)."""

    def get_transform(self, image: np.ndarray) -> T.Transform:
        """detectron2's draw."""
        return _float32_blend(super().get_transform(image))


class RandomContrastFloat32(T.RandomContrast):
    """detectron2's ``RandomContrast``, blending in float32 (see :func:`_float32_blend`)."""

    def get_transform(self, image: np.ndarray) -> T.Transform:
        """detectron2's draw."""
        return _float32_blend(super().get_transform(image))


class RandomSaturationInFormat(T.RandomSaturation):
    """detectron2's ``RandomSaturation`` for BGR images too, blending in float32.

    NOTE: detectron2's computes the grey it blends towards with RGB weights (0.299, 0.587,
    0.114) whatever the channel order; for BGR the weights are applied to the reversed view.
    """

    def __init__(self, intensity_min: float, intensity_max: float, image_format: str = "BGR"):
        """Args: detectron2's saturation factor range, and the images' channel order."""
        _check_format(image_format)
        super().__init__(intensity_min, intensity_max)
        self.image_format = image_format

    def get_transform(self, image: np.ndarray) -> T.Transform:
        """detectron2's draw, with the grey computed in RGB order."""
        rgb = image[:, :, ::-1] if self.image_format == "BGR" else image
        # A blend towards an HxWx1 grey: the channel order no longer matters after it.
        return _float32_blend(super().get_transform(rgb))


class RandomHue(T.Augmentation):
    """Shift the hue by ``U(-hue, hue)`` turns of the colour circle (see :func:`shift_hue`)."""

    def __init__(self, hue: float, image_format: str = "BGR") -> None:
        """Args:
        hue: half-width of the shift's range, 0..0.5.
        image_format: channel order of the images it will see.
        """
        super().__init__()
        _check_format(image_format)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        """Draw from numpy's global RNG (seeded per worker by detectron2)."""
        shift = float(np.random.uniform(-self.hue, self.hue))
        return T.ColorTransform(
            functools.partial(shift_hue, shift=shift, image_format=self.image_format)
        )


def _checked(cfg_node: CfgNode, key: str, low: float, high: float, name: str) -> float:
    """``cfg_node[key]`` as a float within ``[low, high]``; else a ConfigError naming it."""
    value = float(cfg_node[key])
    if not low <= value <= high:
        raise ConfigError(f"{name}.{key} must be within [{low}, {high}], got {value}")
    return value


def build_color_augmentations(cfg: CfgNode) -> list[T.Augmentation]:
    """The training-time stain and colour augmentations ``INPUT.STAIN``/``INPUT.COLOR`` ask for.

    Why in this order and at the end of the mapper's list: they change no geometry, so they run
    on the final (resized, cropped) image, and the geometric draws before them stay the same
    whether they are on or off. Each group is applied to a sample with its own ``PROB``
    (detectron2's ``RandomApply``); within the colour group, brightness, contrast, saturation and
    hue follow each other with factors ``U(1 - x, 1 + x)`` (hue: shift ``U(-x, x)``), and a zero
    range leaves that one out.

    Raises:
        ConfigError: a value out of its range, naming the key.
    """
    image_format = cfg.INPUT.FORMAT
    augs: list[T.Augmentation] = []
    stain = cfg.INPUT.STAIN
    if stain.ENABLED:
        prob = _checked(stain, "PROB", 0.0, 1.0, "INPUT.STAIN")
        sigma = _checked(stain, "HED_SIGMA", 0.0, 1.0, "INPUT.STAIN")
        bias = _checked(stain, "HED_BIAS", 0.0, 1.0, "INPUT.STAIN")
        if prob > 0 and (sigma > 0 or bias > 0):
            augs.append(T.RandomApply(RandomHedJitter(sigma, bias, image_format), prob))
    color = cfg.INPUT.COLOR
    if color.ENABLED:
        prob = _checked(color, "PROB", 0.0, 1.0, "INPUT.COLOR")
        group: list[T.Augmentation] = []
        brightness = _checked(color, "BRIGHTNESS", 0.0, 1.0, "INPUT.COLOR")
        if brightness > 0:
            group.append(RandomBrightnessFloat32(1.0 - brightness, 1.0 + brightness))
        contrast = _checked(color, "CONTRAST", 0.0, 1.0, "INPUT.COLOR")
        if contrast > 0:
            group.append(RandomContrastFloat32(1.0 - contrast, 1.0 + contrast))
        saturation = _checked(color, "SATURATION", 0.0, 1.0, "INPUT.COLOR")
        if saturation > 0:
            group.append(RandomSaturationInFormat(1.0 - saturation, 1.0 + saturation, image_format))
        hue = _checked(color, "HUE", 0.0, 0.5, "INPUT.COLOR")
        if hue > 0:
            group.append(RandomHue(hue, image_format))
        if prob > 0 and group:
            augs.append(T.RandomApply(T.AugmentationList(group), prob))
    return augs
