"""Tests for cellseg_d2.config.defaults: the project's keys and their safe defaults."""

from __future__ import annotations

import pytest

from cellseg_d2.config.defaults import add_cellseg_config, default_cells_root, get_cellseg_cfg


def test_defaults_are_safe_and_adding_twice_is_harmless() -> None:
    cfg = get_cellseg_cfg()
    assert cfg.INPUT.PIXEL_SIZE == 0.0
    assert cfg.MODEL.CELLSEG.TRUST_PICKLE is False
    assert cfg.DATASETS.CLASS_NAMES and cfg.SOLVER.EPOCHS == 0
    before = cfg.dump()
    add_cellseg_config(cfg)
    assert cfg.dump() == before


def test_default_cells_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELLSEG_DATASETS", raising=False)
    assert default_cells_root().replace("\\", "/") == "datasets/cells"
    monkeypatch.setenv("CELLSEG_DATASETS", "/data/cells")
    assert default_cells_root() == "/data/cells"
