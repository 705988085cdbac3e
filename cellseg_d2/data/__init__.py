"""Cell dataset: readers, RLE helpers, validation, COCO conversion and detectron2 registration.

Importing this package registers nothing; call :func:`register_cell_datasets` (or
:func:`register_cell_datasets_from_config`) where the datasets are needed.
"""

from cellseg_d2.data.convert import load_test_coco, load_train_coco
from cellseg_d2.data.dataset_dicts import load_cell_test_dicts, load_cell_train_dicts
from cellseg_d2.data.io import read_image, read_instance_mask, write_tiff
from cellseg_d2.data.prepare import prepare_cell_dataset
from cellseg_d2.data.register import register_cell_datasets, register_cell_datasets_from_config
from cellseg_d2.data.rle import decode_rle, encode_mask, label_image_to_instances
from cellseg_d2.data.splits import split_of, write_coco_subset
from cellseg_d2.data.validate import scan_dataset
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "CellDataError",
    "decode_rle",
    "encode_mask",
    "label_image_to_instances",
    "load_cell_test_dicts",
    "load_cell_train_dicts",
    "load_test_coco",
    "load_train_coco",
    "prepare_cell_dataset",
    "read_image",
    "read_instance_mask",
    "register_cell_datasets",
    "register_cell_datasets_from_config",
    "scan_dataset",
    "split_of",
    "write_coco_subset",
    "write_tiff",
]
