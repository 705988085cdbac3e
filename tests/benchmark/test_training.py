"""Training-side figures: conversion, loader and the trainer step timer."""

from __future__ import annotations

from pathlib import Path

from detectron2.utils.events import EventStorage

from cellseg_d2.benchmark.training import (
    StockTrainer,
    loader_images_per_second,
    step_timer,
    time_conversion,
)
from cellseg_d2.config import load_cellseg_config
from tests.conftest import INSTANT_CONFIG


def _cache_files(root: Path) -> dict[str, int]:
    cache = root / ".cellseg_cache"
    return {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} if cache.is_dir() else {}


def test_time_conversion_counts_images_and_leaves_the_dataset_cache(synthetic_root: Path) -> None:
    before = _cache_files(synthetic_root)
    figures = time_conversion(synthetic_root)
    assert figures["images"] == 12
    assert figures["cold_s"] > 0 and figures["cached_s"] > 0
    assert _cache_files(synthetic_root) == before  # converted a copy


def test_loader_delivers_images(cells_prefix: str) -> None:
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{cells_prefix}_train',)"]
    cfg = load_cellseg_config(INSTANT_CONFIG, opts)
    assert loader_images_per_second(cfg, batches=1) > 0


class _CountingTrainer:
    """Just the public step a trainer offers: ``run_step`` and a ``storage`` slot."""

    def __init__(self) -> None:
        self.steps = 0
        self.storage = None

    def run_step(self) -> None:
        self.steps += 1


def test_step_timer_runs_the_public_step_and_advances_the_storage() -> None:
    trainer = _CountingTrainer()
    with EventStorage(0) as storage:
        step = step_timer(trainer, storage)  # type: ignore[arg-type]
        assert trainer.storage is storage
        seconds = [step(), step()]
    assert trainer.steps == 2 and storage.iter == 2
    assert all(s >= 0 for s in seconds)


def test_stock_trainer_is_detectron2s_own() -> None:
    from detectron2.engine import DefaultTrainer

    assert StockTrainer.__mro__[1] is DefaultTrainer
    own = set(vars(StockTrainer)) - {"__module__", "__doc__", "__qualname__", "__firstlineno__"}
    assert not {name for name in own if not name.startswith("__")}  # nothing overridden
