"""Shared fixtures: one small synthetic dataset per test session, and config helpers."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

import cellseg_d2.modeling  # noqa: F401  (registers CellRCNN)
from cellseg_d2.config import load_cellseg_config
from cellseg_d2.data import register_cell_datasets
from cellseg_d2.data.synthetic import generate_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
INSTANT_CONFIG = CONFIGS / "quick_schedules" / "instant_test.yaml"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


TOOL_LOGGERS = ("cellseg_d2", "detectron2", "fvcore", "d2")


@pytest.fixture(autouse=True)
def restore_tool_loggers() -> Iterator[None]:
    """Undo what a tool's ``setup_logger`` did to the loggers once the test is over.

    detectron2's ``setup_logger`` is cached and attaches handlers to the ``sys.stdout`` of the
    moment (a capture stream pytest closes after the test) and stops propagation, so later tests
    would log into a closed stream ("--- Logging error ---") and ``caplog`` would see nothing.
    """
    loggers = [logging.getLogger(name) for name in TOOL_LOGGERS]
    saved = [(logger.handlers[:], logger.propagate, logger.level) for logger in loggers]
    yield
    for logger, (handlers, propagate, level) in zip(loggers, saved):
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.propagate, logger.level = propagate, level
    setup_logger.cache_clear()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-train / 3-test synthetic dataset of 96-160 px images (generated once, ~1 s)."""
    root = tmp_path_factory.mktemp("cells")
    generate_synthetic_dataset(root, num_train=12, num_test=3, seed=0, min_size=96, max_size=160)
    return root


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[dict]]:
    """Three synthetic test images (the first dense), the id map, and the ground truth written
    as a submission (a perfect one)."""
    from cellseg_d2.data.id_map import load_id_map
    from cellseg_d2.evaluation.scoring import ground_truth_as_results, load_ground_truth_coco

    root = tmp_path_factory.mktemp("synthetic_test")
    generate_synthetic_dataset(root, 0, 3, seed=2, min_size=128, max_size=192)
    entries = load_id_map(root / "test_image_name_to_ids.json")
    results = ground_truth_as_results(load_ground_truth_coco(root / "test_gt", entries))
    return root, entries, results


@pytest.fixture()
def cells_prefix(synthetic_root: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """Register the synthetic dataset under a test-unique prefix and remove it afterwards."""
    prefix = "t_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    names = register_cell_datasets(synthetic_root, prefix=prefix, val_fraction=0.25, seed=0)
    yield prefix
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def instant_cfg(prefix: str, output_dir: Path, *opts: object) -> CfgNode:
    """The instant-test config on CPU, trained on ``<prefix>_train``, evaluated on ``_val``.

    Read with the project's safe loader, as the tools read configs; ``opts`` are ``KEY, VALUE``
    overrides (Python values are taken as they are).
    """
    return load_cellseg_config(
        INSTANT_CONFIG,
        [
            "MODEL.DEVICE",
            "cpu",
            "DATASETS.TRAIN",
            (f"{prefix}_train",),
            "DATASETS.TEST",
            (f"{prefix}_val",),
            "OUTPUT_DIR",
            str(output_dir),
            *opts,
        ],
    )


def load_tool(path: Path) -> ModuleType:
    """Import a script of ``tools/`` as a module, to call its ``main`` in-process (fast)."""
    spec = importlib.util.spec_from_file_location(path.stem + "_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
