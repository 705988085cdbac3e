"""The error types: one base the tools map to exit 2, the ValueError callers used to catch, and
messages passed through unchanged (they name the file or key)."""

from __future__ import annotations

import pytest

import cellseg_d2.errors as errors
from cellseg_d2.errors import CellDataError, CellSegError, ConfigError


def test_exports_exactly_the_four_types() -> None:
    assert sorted(errors.__all__) == [
        "CellDataError",
        "CellSegError",
        "ConfigError",
        "OutputExistsError",
    ]


def test_output_exists_is_a_cellseg_error_and_a_file_exists_error() -> None:
    from cellseg_d2.errors import OutputExistsError

    assert issubclass(OutputExistsError, CellSegError)
    assert issubclass(OutputExistsError, FileExistsError)


@pytest.mark.parametrize("error", [CellDataError, ConfigError])
def test_each_type_is_a_cellseg_error_and_a_value_error(error: type[Exception]) -> None:
    assert issubclass(error, CellSegError)
    assert issubclass(error, ValueError)  # earlier callers catch ValueError


def test_the_base_is_not_a_value_error_and_the_types_are_unrelated() -> None:
    # A bare ValueError from a bug must not be mistaken for bad input (exit 2).
    assert issubclass(CellSegError, Exception) and not issubclass(CellSegError, ValueError)
    assert not issubclass(ValueError, CellSegError)
    assert not issubclass(CellDataError, ConfigError) and not issubclass(ConfigError, CellDataError)


def test_weights_error_beside_the_checkpointer_shares_the_base() -> None:
    from cellseg_d2.checkpoint import WeightsUnavailableError

    assert issubclass(WeightsUnavailableError, CellSegError)


@pytest.mark.parametrize("error", [CellSegError, CellDataError, ConfigError])
def test_message_is_kept_and_caught_by_the_base(error: type[CellSegError]) -> None:
    message = "train/a/class5.tif: mask of class 5, but DATASETS.CLASS_NAMES lists only 4"
    with pytest.raises(CellSegError) as info:
        raise error(message)
    assert type(info.value) is error
    assert str(info.value) == message
    assert info.value.args == (message,)
