"""The layout names, class-name helpers and the one class palette."""

from __future__ import annotations

import pytest

from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.layout import (
    CACHE_DIR,
    DEFAULT_CLASS_NAMES,
    ID_MAP_NAME,
    IMAGE_FILE_NAME,
    TEST_DIR,
    TEST_GT_DIR,
    TRAIN_DIR,
    check_class_names,
    class_color,
    class_colors,
    class_file_name,
    class_index_of,
    class_name,
    coco_categories,
    generic_class_name,
    parse_class_names,
)

BASE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)]


def test_layout_names_are_the_documented_ones() -> None:
    # datasets/README.md, the importers and the submission tools all rely on these spellings.
    assert (TRAIN_DIR, TEST_DIR, TEST_GT_DIR) == ("train", "test_release", "test_gt")
    assert (ID_MAP_NAME, IMAGE_FILE_NAME) == ("test_image_name_to_ids.json", "image.tif")
    assert CACHE_DIR == ".cellseg_cache"
    assert DEFAULT_CLASS_NAMES == ("epithelial", "lymphocyte", "neutrophil", "macrophage")


# ---- palette --------------------------------------------------------------------------------


def test_six_classes_get_six_distinct_colours_the_first_four_fixed() -> None:
    colors = class_colors(6)
    assert colors[:4] == BASE
    # classes 5 and 6: golden-ratio hue steps from 0.11 at saturation 0.75, value 0.9
    assert colors[4:] == [(230, 171, 57), (121, 57, 230)]
    assert len(set(colors)) == 6


def test_fewer_classes_take_a_prefix_of_the_base_colours() -> None:
    assert class_colors(0) == []
    assert class_colors(1) == BASE[:1]
    assert class_colors(3) == BASE[:3]


def test_class_colors_distinct_for_many_classes() -> None:
    colors = [tuple(class_color(k)) for k in range(12)]
    assert len(set(colors)) == 12
    assert all(0 <= v <= 255 for color in colors for v in color)


def test_a_class_keeps_its_colour_whatever_the_number_of_classes() -> None:
    # Figures of a 5-class model and GeoJSON of a 20-class one draw class K alike.
    many = class_colors(20)
    for n in range(1, 20):
        assert class_colors(n) == many[:n]
    assert [class_color(k) for k in range(20)] == many
    assert all(isinstance(v, int) for color in many for v in color)


# ---- class names and file names -------------------------------------------------------------


def test_generic_name_and_fallback_beyond_the_configured_names() -> None:
    names = ["tumour", "stroma"]
    assert generic_class_name(1) == "class1" and generic_class_name(12) == "class12"
    assert [class_name(k, names) for k in range(4)] == ["tumour", "stroma", "class3", "class4"]
    assert class_name(0, []) == "class1"
    # no Python negative indexing: -1 is not the last name
    assert class_name(-1, names) == "class0"


def test_mask_file_names_and_their_categories() -> None:
    assert class_file_name(0) == "class1.tif" and class_file_name(9) == "class10.tif"
    assert class_index_of("class1.tif") == 0 and class_index_of("class12.tif") == 11
    for k in range(25):
        assert class_index_of(class_file_name(k)) == k


@pytest.mark.parametrize(
    "name",
    [
        "class0.tif",
        "class01.tif",
        "class1.tiff",
        "Class1.tif",
        "class1.TIF",
        "class1.tif.bak",
        "xclass1.tif",
        "class.tif",
        "image.tif",
        "class-1.tif",
    ],
)
def test_other_file_names_are_no_mask(name: str) -> None:
    assert class_index_of(name) is None


def test_check_class_names_accepts_lists_and_tuples() -> None:
    assert check_class_names(["a", "b"]) == ("a", "b")
    assert check_class_names(("nucleus",)) == ("nucleus",)
    assert isinstance(check_class_names(["a"]), tuple)


@pytest.mark.parametrize(
    "value, problem",
    [
        ("epithelial", "expected a list of class names"),
        (None, "expected a list of class names"),
        ({"a": 1}, "expected a list of class names"),
        ([], "needs at least one class name"),
        (["a", 3], "non-empty strings, got 3"),
        (["a", "  "], "non-empty strings, got '  '"),
        (["a", ""], "non-empty strings, got ''"),
        (["a", "b", "a"], "must be distinct, got ['a', 'b', 'a']"),
    ],
)
def test_check_class_names_refuses_naming_the_key(value: object, problem: str) -> None:
    with pytest.raises(CellDataError) as info:
        check_class_names(value, key="MY.KEY")
    message = str(info.value)
    assert message.startswith("MY.KEY: ") and problem in message, message


def test_check_class_names_default_key() -> None:
    with pytest.raises(CellDataError, match=r"^DATASETS\.CLASS_NAMES: "):
        check_class_names([])


def test_parse_class_names_from_the_command_line() -> None:
    assert parse_class_names("a,b,c") == ("a", "b", "c")
    assert parse_class_names(" tumour , stroma ") == ("tumour", "stroma")
    assert parse_class_names("nucleus") == ("nucleus",)
    with pytest.raises(CellDataError, match="^--class-names: class names must be non-empty"):
        parse_class_names("a,,b")
    with pytest.raises(CellDataError, match="^--class-names: class names must be distinct"):
        parse_class_names("a,b, a")


def test_coco_categories_are_one_based() -> None:
    assert coco_categories(["x", "y"]) == [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]
    assert coco_categories([]) == []
    categories = coco_categories(DEFAULT_CLASS_NAMES)
    # COCO id K is the class of classK.tif
    assert [class_file_name(c["id"] - 1) for c in categories] == [
        "class1.tif",
        "class2.tif",
        "class3.tif",
        "class4.tif",
    ]
