"""Model registrations. Importing this package registers ``CellRCNN`` in ``META_ARCH_REGISTRY``
(detectron2 registries are filled by import, which is why the tools import it explicitly)."""

from .meta_arch import CellRCNN, CellRCNNWithTTA

__all__ = ["CellRCNN", "CellRCNNWithTTA"]
