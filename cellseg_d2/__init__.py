"""cellseg-d2: Detectron2-based multi-class cell instance segmentation for microscopy images."""

__version__ = "0.1.0"
