"""Model registrations. Importing this package registers ``CellRCNN`` in ``META_ARCH_REGISTRY``
and ``RoundedAnchorGenerator`` in ``ANCHOR_GENERATOR_REGISTRY`` (detectron2 registries are filled
by import, which is why the tools import it explicitly)."""

from cellseg_d2.modeling.anchor_generator import RoundedAnchorGenerator
from cellseg_d2.modeling.meta_arch import CellRCNN, CellRCNNWithTTA

__all__ = ["CellRCNN", "CellRCNNWithTTA", "RoundedAnchorGenerator"]
