"""An anchor generator that rounds its cell anchors to whole pixels, as torchvision's does.

torchvision's ``AnchorGenerator.generate_anchors`` ends with ``.round()``; detectron2 keeps the
exact fractional half-widths (e.g. 22.63 for a 32 px anchor of aspect ratio 2). A model trained
with torchvision learned its box deltas against the rounded anchors, so reproducing its
proposals exactly needs the same anchors. ``MODEL.ANCHOR_GENERATOR.NAME: RoundedAnchorGenerator``
selects this one; everything else is detectron2's ``DefaultAnchorGenerator``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator

__all__ = ["RoundedAnchorGenerator"]


@ANCHOR_GENERATOR_REGISTRY.register()
class RoundedAnchorGenerator(DefaultAnchorGenerator):
    """``DefaultAnchorGenerator`` whose cell anchors are rounded to integers (torchvision's)."""

    def generate_cell_anchors(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1, 2),
    ) -> torch.Tensor:
        """detectron2's cell anchors (same order: sizes outer, aspect ratios inner), rounded.

        NOTE: torchvision computes ``[-w, -h, w, h] / 2`` in float32 and rounds half to even;
        ``torch.round`` here does the same on the same float32 values.
        """
        anchors = []
        for size in sizes:
            for aspect_ratio in aspect_ratios:
                h_ratio = torch.sqrt(torch.tensor(aspect_ratio, dtype=torch.float32))
                w = (1 / h_ratio) * size  # torchvision's order of operations, bit for bit
                h = h_ratio * size
                anchors.append(torch.stack([-w, -h, w, h]) / 2)
        return torch.stack(anchors).round()
