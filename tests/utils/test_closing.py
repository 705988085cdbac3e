"""The Closing mixin closes on every exit of a ``with`` block."""

from __future__ import annotations

import pytest

from cellseg_d2.utils.closing import Closing


class Resource(Closing):
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_with_returns_the_object_and_closes_once() -> None:
    resource = Resource()
    with resource as entered:
        assert entered is resource and resource.closed == 0
    assert resource.closed == 1


def test_closes_when_the_block_raises_and_lets_the_error_through() -> None:
    resource = Resource()
    with pytest.raises(KeyError), resource:
        raise KeyError("x")
    assert resource.closed == 1
