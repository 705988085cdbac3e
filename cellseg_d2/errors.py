"""The error types cellseg-d2 raises for bad input, under one base the tools catch.

Every tool maps :class:`CellSegError` to exit status 2 and prints its message, which names the
file or config key and says what is wrong; anything else is a bug and keeps its traceback. The
types below derive from this base: :class:`CellDataError` (data files), :class:`ConfigError`
(config files and overrides), :class:`OutputExistsError` (an output not to be replaced) and
``WeightsUnavailableError`` (``MODEL.WEIGHTS``, beside the checkpointer).

NOTE: this module imports nothing from the package, so every module can import it.
"""

from __future__ import annotations

__all__ = ["CellDataError", "CellSegError", "ConfigError", "OutputExistsError"]


class CellSegError(Exception):
    """Bad input from the user: the message names the file or key and the problem."""


class ConfigError(CellSegError, ValueError):
    """A config file or a ``KEY VALUE`` override that cannot be used: missing or malformed file,
    an unsafe YAML tag, a refused ``_BASE_``, an unknown key or a value of the wrong type."""


class CellDataError(CellSegError, ValueError):
    """A problem with the user's data: the message names the file and says what is wrong.

    The tools turn it into exit status 2, so scripts can tell bad input from a crash.
    """


class OutputExistsError(CellSegError, FileExistsError):
    """An output that already exists and was not to be replaced: the message names it and how to
    replace it. Also a ``FileExistsError``, for callers of the API that catch that."""
