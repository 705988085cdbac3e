"""The pieces every command-line tool shares: the ``--class-names`` flag, the mapping of bad
input to exit status 2, and a console free of known third-party warnings.

Why here: each tool used to repeat the ``except CellSegError: print; return 2`` block and its
own flag parsing; one wrapper keeps the promise "bad input exits 2 with the file named, never a
traceback" the same in every tool.
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from collections.abc import Callable
from typing import TypeVar

from cellseg_d2.errors import CellDataError, CellSegError
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES, parse_class_names

__all__ = [
    "EXIT_BAD_INPUT",
    "add_class_names_argument",
    "exit_2_on_bad_input",
    "quiet_third_party_warnings",
]

#: Exit status of every tool for bad input (a file, flag, config key or weights named).
EXIT_BAD_INPUT = 2

_Main = TypeVar("_Main", bound=Callable[..., int])

#: Warnings third-party code prints on every run that say nothing to our users; filtered only by
#: the tools (:func:`quiet_third_party_warnings`), never for people who import the package.
_KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`torch\.jit\.script` is deprecated", FutureWarning),
    (r"torch\.meshgrid: in an upcoming release", UserWarning),
    (r"`?is_fx_tracing`? .*deprecated", FutureWarning),
    (r"__array__ implementation doesn't accept a copy keyword", DeprecationWarning),
    (r"pkg_resources is deprecated", UserWarning),
)


def quiet_third_party_warnings() -> None:
    """Hide the known third-party warnings (detectron2's use of deprecated torch APIs) so the
    first screen a tool prints is its own. Called by the tools only."""
    for message, category in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def exit_2_on_bad_input(main: _Main) -> _Main:
    """Wrap a tool's ``main`` so that bad input prints ``error: <message>`` and returns 2.

    :class:`CellSegError` is bad input (its message names the file or key); anything else is a
    bug and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> int:
        try:
            return main(*args, **kwargs)
        except CellSegError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapper  # type: ignore[return-value]


def add_class_names_argument(parser: argparse.ArgumentParser) -> None:
    """Give a tool without a config the ``--class-names a,b,c`` flag, parsed and checked.

    Why one helper: every tool that reads masks or submissions without a config must agree on
    the flag, its default (the four MoNuSAC names) and its checks; a bad value exits 2 with
    :func:`~cellseg_d2.utils.layout.check_class_names`' message, as argparse does for any bad
    flag.
    """

    def class_names(text: str) -> tuple[str, ...]:
        try:
            return parse_class_names(text)
        except CellDataError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parser.add_argument(
        "--class-names",
        type=class_names,
        default=DEFAULT_CLASS_NAMES,
        help="comma-separated class names, name K for classK.tif / category_id K (default: "
        f"{','.join(DEFAULT_CLASS_NAMES)}; use the training config's DATASETS.CLASS_NAMES)",
    )
