"""The error types cellseg-d2 raises for bad input, under one base the tools catch.

Every tool maps :class:`CellSegError` to exit status 2 and prints its message, which names the
file or config key and says what is wrong; anything else is a bug and keeps its traceback. The
concrete types live beside the code that raises them and derive from this base:
``cellseg_d2.data.io.CellDataError`` (data files), ``cellseg_d2.engine.WeightsUnavailableError``
(``MODEL.WEIGHTS``) and :class:`ConfigError` (config files and overrides).

NOTE: this module imports nothing from the package, so every module can import it.
"""

from __future__ import annotations

__all__ = ["CellSegError", "ConfigError"]


class CellSegError(Exception):
    """Bad input from the user: the message names the file or key and the problem."""


class ConfigError(CellSegError, ValueError):
    """A config file or a ``KEY VALUE`` override that cannot be used: missing or malformed file,
    an unsafe YAML tag, a refused ``_BASE_``, an unknown key or a value of the wrong type."""
