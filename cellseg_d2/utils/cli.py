"""The pieces every command-line tool shares: the parser, console logging, the ``--class-names``
flag, the mapping of bad input to exit status 2, and a console free of known third-party
warnings.

Why here: each tool used to repeat the ``except CellSegError: print; return 2`` block, its own
logging set-up and its own flag parsing; one wrapper keeps the promise "bad input exits 2 with the
file named, never a traceback" the same in every tool, and one filter keeps the first screen a
tool prints its own.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

from cellseg_d2.errors import CellDataError, CellSegError
from cellseg_d2.utils.layout import DEFAULT_CLASS_NAMES, parse_class_names

__all__ = [
    "EXIT_BAD_INPUT",
    "add_class_names_argument",
    "add_config_arguments",
    "add_dataset_arguments",
    "add_submission_arguments",
    "exit_2_on_bad_input",
    "flags",
    "import_warnings_hidden",
    "log_to_console",
    "quiet_third_party_warnings",
    "tool_parser",
]

#: Exit status of every tool for bad input (a file, flag, config key or weights named).
EXIT_BAD_INPUT = 2

_Main = TypeVar("_Main", bound=Callable[..., int])

#: Warnings third-party code prints on every run that say nothing to our users; filtered only by
#: the tools (:func:`quiet_third_party_warnings`), never for people who import the package (who
#: are spared them only while the package imports detectron2: :func:`import_warnings_hidden`).
_KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # fvcore's and detectron2's @torch.jit.script decorators, as their modules are imported.
    (r"`torch\.jit\.script` is deprecated", FutureWarning),
    # detectron2's anchor generator calls torch.meshgrid without indexing= (first forward pass).
    (r"torch\.meshgrid: in an upcoming release", UserWarning),
    # pycocotools hands numpy 2 objects whose __array__ predates the copy keyword.
    (r"__array__ implementation doesn't accept a copy keyword", DeprecationWarning),
    # detectron2's model zoo imports pkg_resources (looking up a zoo config's weights URL).
    (r"pkg_resources is deprecated", UserWarning),
)

#: Records third-party loggers write on every run that say nothing to our users, by logger name
#: (message patterns); filtered like :data:`_KNOWN_WARNINGS`. torch logs (does not warn) that
#: ``is_fx_tracing`` is ambiguous the first time detectron2's ROIPooler asks it.
_KNOWN_LOG_RECORDS: dict[str, tuple[str, ...]] = {
    "torch.fx._symbolic_trace": (r"is_fx_tracing will return true",),
}


class _DropKnownRecords(logging.Filter):
    """A logger filter that drops the records whose message matches one of ``patterns``."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(pattern) for pattern in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record unless its message is a known one."""
        message = record.getMessage()
        return not any(pattern.match(message) for pattern in self.patterns)


#: One filter per logger, so that calling :func:`quiet_third_party_warnings` again adds nothing.
_LOG_FILTERS = {name: _DropKnownRecords(patterns) for name, patterns in _KNOWN_LOG_RECORDS.items()}


def quiet_third_party_warnings() -> None:
    """Hide the known third-party warnings and log records (detectron2's, fvcore's and
    pycocotools' use of deprecated APIs) so the first screen a tool prints is its own. Called by
    the tools only, before they import the rest: some of these warnings are emitted on import.

    Idempotent. Warnings of our own code and any other third-party warning still show.
    """
    for message, category in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, record_filter in _LOG_FILTERS.items():
        logging.getLogger(name).addFilter(record_filter)  # addFilter skips one already there


def _is_known_warning(message: Warning | str, category: type[Warning]) -> bool:
    """Whether a warning is one of :data:`_KNOWN_WARNINGS`, matched as a warnings filter would."""
    text = str(message)
    return any(
        issubclass(category, known) and re.match(pattern, text, re.IGNORECASE)
        for pattern, known in _KNOWN_WARNINGS
    )


@contextlib.contextmanager
def import_warnings_hidden() -> Iterator[None]:
    """Leave the known third-party warnings unprinted while the block runs.

    Why: ``import cellseg_d2`` registers the model components, so it imports detectron2's
    modeling, whose import (and fvcore's) warns that ``torch.jit.script`` is deprecated; and that
    import runs before any tool can call :func:`quiet_third_party_warnings`, since the function
    lives in the package. The package ``__init__`` wraps only that import in this block, so
    nothing of a user's own code is ever hidden by importing the package.

    NOTE: it wraps ``warnings.showwarning`` instead of adding filters: ``catch_warnings`` would
    also undo the filters that torch, numpy and sympy install as they are imported. Filters still
    decide as before (``-W error`` still raises).
    """
    show = warnings.showwarning

    def show_unless_known(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: object = None,
        line: str | None = None,
    ) -> None:
        if not _is_known_warning(message, category):
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_unless_known
    try:
        yield
    finally:
        if warnings.showwarning is show_unless_known:  # else someone set their own: keep it
            warnings.showwarning = show


def tool_parser(doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of a tool, described by the first paragraph of its docstring.

    Why one helper: ``--help`` of every tool opens with the same sentence as its module
    docstring, so the two never drift apart.
    """
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def log_to_console(verbose: bool = False, level: int = logging.INFO) -> None:
    """Log to stderr as ``LEVEL logger: message``: the tools that do not train or predict.

    Why one helper: those tools print their result on stdout and their progress as log lines on
    stderr, in one format (the training and prediction tools use detectron2's ``setup_logger``).

    Args:
        verbose: log DEBUG records too.
        level: the lowest level logged otherwise.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else level, format="%(levelname)s %(name)s: %(message)s"
    )


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


def add_class_names_argument(
    parser: argparse.ArgumentParser,
    default: tuple[str, ...] | None = DEFAULT_CLASS_NAMES,
    help_text: str | None = None,
) -> None:
    """Give a tool without a config the ``--class-names a,b,c`` flag, parsed and checked.

    Why one helper: every tool that reads masks or submissions without a config must agree on
    the flag, its default (the four MoNuSAC names) and its checks; a bad value exits 2 with
    :func:`~cellseg_d2.utils.layout.check_class_names`' message, as argparse does for any bad
    flag.

    Args:
        parser: the tool's parser.
        default: the value when the flag is not given (``None``: the tool decides later).
        help_text: the flag's help, when the default is not the four MoNuSAC names.
    """

    def class_names(text: str) -> tuple[str, ...]:
        try:
            return parse_class_names(text)
        except CellDataError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    if help_text is None:
        help_text = (
            "comma-separated class names, name K for classK.tif / category_id K (default: "
            f"{','.join(DEFAULT_CLASS_NAMES)}; use the training config's DATASETS.CLASS_NAMES)"
        )
    parser.add_argument("--class-names", type=class_names, default=default, help=help_text)


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Give a tool that builds a model config ``--config-file`` and the trailing ``KEY VALUE``
    overrides (``opts``), as detectron2's own tools spell them.

    Why one helper: the tools that train, predict, export or time a model read the same config
    the same way, so the flags must read the same in each ``--help``.

    Args:
        parser: the tool's parser.
        required: whether ``--config-file`` must be given (a tool may check it itself).
    """
    parser.add_argument("--config-file", required=required, help="model config (YAML)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")


def add_submission_arguments(
    parser: argparse.ArgumentParser, id_map: bool = True, pred: bool = True
) -> None:
    """Give a tool that reads a submission ``--id-map`` (the test id map) and/or ``--pred`` (the
    submission), both required.

    Why one helper: every tool that checks, scores, draws or writes a submission names the id
    map and the submission with the same flags and help.

    Args:
        parser: the tool's parser.
        id_map: add ``--id-map``.
        pred: add ``--pred``.
    """
    if id_map:
        parser.add_argument("--id-map", required=True, help="test_image_name_to_ids.json")
    if pred:
        parser.add_argument("--pred", required=True, help="submission: results JSON or zip")


def flags(args: argparse.Namespace, *names: str) -> dict[str, object]:
    """The values of the named flags, as keyword arguments of the package function a tool calls.

    Why: a thin tool hands most of its flags on, unchanged, to one function whose parameters
    carry the flags' names; naming each once (``**cli.flags(args, "seed", "overwrite")``) keeps
    that call short, and a flag renamed on one side only fails at once.
    """
    return {name: getattr(args, name) for name in names}


def _non_negative_int(text: str) -> int:
    """argparse type of a count or area: an integer >= 0, or an argparse error."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def add_dataset_arguments(parser: argparse.ArgumentParser, default_root: str) -> None:
    """Give a tool that reads a dataset root ``--root``, ``--class-names`` and ``--min-area``.

    Why one helper: preparing a dataset and reporting its statistics must read it as training
    does (the same root, class names and smallest instance kept), so the flags that say how
    must be the same in both tools.

    Args:
        parser: the tool's parser.
        default_root: ``--root`` when not given (the config's ``default_cells_root()``).
    """
    parser.add_argument(
        "--root", default=default_root, help="dataset root (default: $CELLSEG_DATASETS)"
    )
    add_class_names_argument(parser)
    parser.add_argument(
        "--min-area",
        type=_non_negative_int,
        default=4,
        help="leave out instances with fewer pixels (default 4)",
    )
