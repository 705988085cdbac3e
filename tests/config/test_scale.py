"""INPUT.CELL_DIAMETER -> INPUT.SCALE, the model's pixel size, and the finishing rule."""

from __future__ import annotations

import logging

import pytest

from cellseg_d2.config import (
    anchor_fit_warning,
    finish_config,
    get_cellseg_cfg,
    input_scale,
    model_pixel_size,
    resolve_input_scale,
    scale_for_diameter,
)
from cellseg_d2.errors import ConfigError


def _cfg(*opts: object):
    cfg = get_cellseg_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.merge_from_list(list(opts))
    return cfg


def test_factor_is_target_over_median() -> None:
    assert scale_for_diameter(32.0, 16.0) == 2.0
    assert scale_for_diameter(30.0, 40.0) == 0.75
    with pytest.raises(ConfigError, match="no instances"):
        scale_for_diameter(32.0, float("nan"))
    with pytest.raises(ConfigError, match="INPUT.CELL_DIAMETER"):
        scale_for_diameter(0.0, 10.0)


def test_input_scale_off_set_and_uncomputed() -> None:
    assert input_scale(_cfg()) == 0.0
    assert input_scale(_cfg("INPUT.SCALE", 1.5)) == 1.5
    with pytest.raises(ConfigError, match="INPUT.SCALE was never computed"):
        input_scale(_cfg("INPUT.CELL_DIAMETER", 32.0))
    with pytest.raises(ConfigError, match="INPUT.SCALE"):
        input_scale(_cfg("INPUT.SCALE", -1.0))


def test_model_pixel_size_is_pixel_size_over_scale() -> None:
    assert model_pixel_size(_cfg("INPUT.PIXEL_SIZE", 0.5, "INPUT.SCALE", 2.0)) == 0.25
    assert model_pixel_size(_cfg("INPUT.PIXEL_SIZE", 0.25, "INPUT.SCALE", 0.5)) == 0.5
    assert model_pixel_size(_cfg("INPUT.PIXEL_SIZE", 0.5)) == 0.5  # scale off: as configured
    assert model_pixel_size(_cfg("INPUT.SCALE", 2.0)) == 0.0  # unknown stays unknown


def test_resolve_fills_the_scale_once_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def median(cfg) -> float:
        calls.append(cfg)
        return 12.5

    cfg = _cfg("INPUT.CELL_DIAMETER", 25.0)
    cfg.freeze()
    with caplog.at_level(logging.INFO, logger="cellseg_d2"):
        done = resolve_input_scale(cfg, median)
    assert done.INPUT.SCALE == 2.0 and done.is_frozen() and cfg.INPUT.SCALE == 0.0
    assert len(calls) == 1
    assert "INPUT.SCALE 2.0000 = INPUT.CELL_DIAMETER 25 px / median" in caplog.text
    assert resolve_input_scale(_cfg(), median) is not None and len(calls) == 1  # off: no call
    unresolved = _cfg("INPUT.CELL_DIAMETER", 25.0)
    assert resolve_input_scale(unresolved, None) is unresolved  # prediction: left as it is


def test_a_set_scale_is_kept_and_a_mismatch_warned(caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg("INPUT.CELL_DIAMETER", 32.0, "INPUT.SCALE", 1.0)
    with caplog.at_level(logging.WARNING, logger="cellseg_d2"):
        assert resolve_input_scale(cfg, lambda _: 16.0) is cfg
    assert "INPUT.SCALE 1 is kept" in caplog.text and "gives 2.0000" in caplog.text


def test_cells_outside_the_anchors_are_warned(caplog: pytest.LogCaptureFixture) -> None:
    assert anchor_fit_warning(_cfg(), 32.0) is None
    assert "outside MODEL.ANCHOR_GENERATOR.SIZES (8..128 px)" in anchor_fit_warning(_cfg(), 300)
    with caplog.at_level(logging.WARNING, logger="cellseg_d2"):
        resolve_input_scale(_cfg("INPUT.CELL_DIAMETER", 4.0), lambda _: 20.0)
    assert "4.0 px, is outside" in caplog.text


def test_finish_config_computes_the_scale_from_the_training_diameter() -> None:
    cfg = _cfg("INPUT.CELL_DIAMETER", 30.0)
    finished = finish_config(cfg, train_diameter=lambda _: 20.0)
    assert finished.is_frozen() and finished.INPUT.SCALE == pytest.approx(1.5)
    assert finish_config(cfg).INPUT.SCALE == 0.0  # without data (prediction): untouched
    assert "SCALE: 1.5" in finished.dump()  # saved with the run's config.yaml
