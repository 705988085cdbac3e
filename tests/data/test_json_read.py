"""JSON from untrusted files (cellseg_d2.data.json_read): errors and the value bound."""

from __future__ import annotations

import json
import random

import pytest

from cellseg_d2.data.json_read import check_json_values, json_value_bound
from cellseg_d2.errors import CellDataError
from cellseg_d2.utils.files import parse_json


def _count_values(value: object) -> int:
    """The exact number of values (object members counted once) of a parsed document."""
    if isinstance(value, list):
        return 1 + sum(_count_values(item) for item in value)
    if isinstance(value, dict):
        return 1 + sum(_count_values(item) for item in value.values())
    return 1


def _random_value(rng: random.Random, depth: int = 0) -> object:
    """A random JSON value: nested lists and objects, strings full of brackets and commas."""
    kind = rng.randrange(6 if depth < 4 else 3)
    if kind == 0:
        return rng.randint(-5, 10**6)
    if kind == 1:
        return rng.random()
    if kind == 2:
        return "".join(rng.choice('ab,[]{}"\\:0o') for _ in range(rng.randrange(8)))
    if kind == 3:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 4:
        return {f"k{i},[": _random_value(rng, depth + 1) for i in range(rng.randrange(5))}
    return None


@pytest.mark.parametrize("indent", [None, 2])
def test_value_bound_is_never_below_the_real_count(indent: int | None) -> None:
    rng = random.Random(0)
    for _ in range(300):
        value = _random_value(rng)
        text = json.dumps(value, indent=indent).encode()
        assert json_value_bound(text) >= _count_values(json.loads(text))


def test_value_bound_of_flat_lists_is_exact() -> None:
    assert json_value_bound(b"[0,0,0]") == 4  # the list and its three zeros
    assert json_value_bound(b"[]") == 2
    assert json_value_bound(b'[{"a": 1, "b": [1, 2]}]') == _count_values([{"a": 1, "b": [1, 2]}])


def test_check_json_values_refuses_before_parsing() -> None:
    zeros = b"[" + b"0," * 999 + b"0]"
    check_json_values(zeros, 1001, "z.json", "why")
    with pytest.raises(CellDataError) as error:
        check_json_values(zeros, 1000, "z.json", "because")
    assert str(error.value) == (
        "z.json: holds up to 1001 JSON values, more than the 1000 allowed (because); refused "
        "before parsing"
    )


def test_parse_json_names_the_source() -> None:
    assert parse_json(b'{"a": [1]}', "x") == {"a": [1]}
    for data, needle in (
        (b"[" * 100_000, "nested too deeply"),
        (b"[" + b"9" * 30 + b"]", "30 digits"),
        (b"\xff\xfe[", "unreadable JSON"),
        (b"[1,", "unreadable JSON"),
    ):
        with pytest.raises(CellDataError, match=f"^src.json: .*{needle}"):
            parse_json(data, "src.json")
