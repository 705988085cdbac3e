"""The synthetic slide of the slide benchmark: opened by name, drawn by its rule at every level,
and the fake model's disc finder counting it by class."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from cellseg_d2.benchmark.synthetic_slide import (
    DISC_RGB,
    SyntheticSlide,
    find_discs,
    open_synthetic_slide,
    synthetic_slide_name,
)
from cellseg_d2.data.slide_base import SlideReader


def test_synthetic_slide_opens_by_name_with_a_pyramid() -> None:
    slide = open_synthetic_slide(Path("/nowhere") / synthetic_slide_name(2048, 1024, 96))
    assert isinstance(slide, SlideReader) and slide.pitch == 96
    assert (slide.info.width, slide.info.height) == (2048, 1024)
    assert slide.info.level_downsamples == (1.0, 4.0, 16.0, 64.0)
    assert slide.info.level_dimensions[-1] == (32, 16)
    assert synthetic_slide_name(10, 20) == "synthetic-10x20.slide"  # default pitch unnamed
    assert open_synthetic_slide("synthetic-10x20.slide").pitch == 64
    assert pickle.loads(pickle.dumps(open_synthetic_slide)) is open_synthetic_slide
    with pytest.raises(ValueError, match="not a synthetic slide"):
        open_synthetic_slide("slide.svs")
    with pytest.raises(ValueError, match="pitch"):
        SyntheticSlide(100, 100, pitch=23)


def test_synthetic_slide_is_a_function_of_position() -> None:
    slide = SyntheticSlide(1024, 768)
    whole = slide.read_region(0, 0, 0, 1024, 768)
    assert np.array_equal(slide.read_region(300, 200, 0, 400, 300), whole[200:500, 300:700])
    assert np.array_equal(whole, SyntheticSlide(1024, 768).read_region(0, 0, 0, 1024, 768))
    assert (whole[:64] == 255).all() and (whole[:, -64:] == 255).all()  # a glass margin
    beyond = slide.read_region(1000, 0, 0, 50, 10)
    assert (beyond[:, 24:] == 255).all()  # outside the slide: white
    coarse = slide.read_region(0, 0, 1, 256, 192)  # level 4x samples the level-0 centres
    assert np.mean(coarse != whole[1::4, 1::4]) < 0.01


def test_synthetic_slide_draws_the_rule_at_every_level() -> None:
    # the rule, pixel by pixel: glass outside [margin, size - margin), tissue inside, a disc of
    # DISC_RADIUS around each grid centre k * pitch + pitch / 2 of the disc range, coloured by
    # the checkerboard parity of its grid index; a coarse pixel shows the level-0 pixel at its
    # centre. The reader draws it from a table of row and column kinds: it must agree.
    slide = SyntheticSlide(700, 500, pitch=48)
    (fx, nx), (fy, ny) = slide.discs_x, slide.discs_y
    for level, d in enumerate(slide.info.level_downsamples[:2]):
        x, y, w, h = 37, 11, int(640 // d), int(480 // d)
        got = slide.read_region(x, y, level, w, h)
        u = (x // int(d) + np.arange(w)) * d + (d - 1) / 2
        v = (y // int(d) + np.arange(h)) * d + (d - 1) / 2
        expected = np.empty((h, w, 3), np.uint8)
        for i, vy in enumerate(v):
            for j, ux in enumerate(u):
                inside = slide.margin <= min(ux, vy) and max(ux - 700, vy - 500) < -slide.margin
                kx, ky = int(ux // 48), int(vy // 48)
                on_disc = (ux - kx * 48 - 24) ** 2 + (vy - ky * 48 - 24) ** 2 <= 10**2
                on_disc &= fx <= kx < fx + nx and fy <= ky < fy + ny
                colour = DISC_RGB[(kx + ky) % 2] if on_disc else (230, 180, 205)
                expected[i, j] = colour if inside else (255, 255, 255)
        assert np.array_equal(got, expected), level


def test_find_discs_counts_the_slide_by_class() -> None:
    slide = SyntheticSlide(1280, 1024)
    bgr = np.ascontiguousarray(slide.read_region(0, 0, 0, 1280, 1024)[:, :, ::-1])
    detections = find_discs(bgr)
    counts = (sum(d.category == 0 for d in detections), sum(d.category == 1 for d in detections))
    assert counts == slide.disc_counts and sum(counts) == 18 * 14
    assert {d.mask.shape for d in detections} == {(21, 21)}
    first = min(detections, key=lambda d: (d.top, d.left))
    rgb = bgr[first.top + 10, first.left + 10, ::-1]
    assert tuple(rgb) == DISC_RGB[first.category]
