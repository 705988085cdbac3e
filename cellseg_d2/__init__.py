"""cellseg-d2: Detectron2-based multi-class cell instance segmentation for microscopy images.

Importing the package registers every component the configs name (``CellRCNN`` in detectron2's
``META_ARCH_REGISTRY``, and any later head), as detectron2's own projects do in their package
``__init__``: ``import cellseg_d2`` is all a user needs before ``build_model(cfg)``. Datasets are
not registered here; that happens in the tools' ``setup()`` (see ``cellseg_d2.data``).
"""

from . import modeling  # noqa: F401  (registers CellRCNN)

__version__ = "0.1.0"
