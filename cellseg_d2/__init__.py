"""cellseg-d2: Detectron2-based multi-class cell instance segmentation for microscopy images.

Importing the package registers every component the configs name (``CellRCNN`` in detectron2's
``META_ARCH_REGISTRY``, and any later head), as detectron2's own projects do in their package
``__init__``: ``import cellseg_d2`` is all a user needs before ``build_model(cfg)``. Datasets are
not registered here; that happens in the tools' ``setup()`` (see ``cellseg_d2.data``).

NOTE: where detectron2 is not installed, the package still imports, so that an exported model
runs there (``cellseg_d2.inference.exported``); nothing is registered then. The deprecation
warnings detectron2's import prints are hidden during that import only (see
:func:`cellseg_d2.utils.cli.import_warnings_hidden`).
"""

from cellseg_d2.utils.cli import import_warnings_hidden

try:
    # NOTE: importing detectron2's modeling warns that torch.jit.script is deprecated (its own
    # and fvcore's decorators). Hidden for this import only, because it is also the first import
    # of every tool; filters set before or after, and warnings of other code, are untouched.
    with import_warnings_hidden():
        from cellseg_d2 import modeling  # noqa: F401  (registers CellRCNN)
except ModuleNotFoundError as _exc:  # only a missing detectron2 is tolerated
    if _exc.name != "detectron2":
        raise

__version__ = "0.1.0"
