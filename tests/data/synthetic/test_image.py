"""Tests for one synthetic image painted in memory (no disk)."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg_d2.data.synthetic import MIN_CELL_PIXELS, synthesize_image


def test_synthesize_image_in_memory() -> None:
    rng = np.random.default_rng(0)
    rgba, labels = synthesize_image(rng, 80, 100, dense=False, required_classes=(1, 2, 3, 4))
    assert rgba.shape == (80, 100, 4) and rgba.dtype == np.uint8
    assert set(labels) == {1, 2, 3, 4}
    for label in labels.values():
        assert label.shape == (80, 100) and label.dtype == np.float64
    # Cells differ from the background: the class pixels are darker on average.
    cells = np.any([label > 0 for label in labels.values()], axis=0)
    assert rgba[cells, :3].mean() < rgba[~cells, :3].mean() - 20


def test_same_generator_state_same_image_and_ids_run_across_classes() -> None:
    first = synthesize_image(np.random.default_rng(3), 64, 72, required_classes=(1, 2, 3))
    again = synthesize_image(np.random.default_rng(3), 64, 72, required_classes=(1, 2, 3))
    assert np.array_equal(first[0], again[0])
    assert first[1].keys() == again[1].keys()
    assert all(np.array_equal(first[1][k], again[1][k]) for k in first[1])
    ids = [np.unique(label[label > 0]) for _, label in sorted(first[1].items())]
    for lower, upper in zip(ids[:-1], ids[1:], strict=True):
        assert lower.max() < upper.min()
    for label in first[1].values():
        _, areas = np.unique(label[label > 0], return_counts=True)
        assert areas.min() >= MIN_CELL_PIXELS


@pytest.mark.parametrize(
    "kwargs",
    [{"height": 0}, {"num_classes": 0}, {"num_classes": 17}, {"required_classes": (1, 5)}],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    arguments = {"height": 40, "width": 40, **kwargs}
    with pytest.raises(ValueError):
        synthesize_image(np.random.default_rng(0), **arguments)
