"""JSON from untrusted files: clear errors for hostile input and a cheap count of its values.

The readers of id maps and submissions parse with :func:`parse_json` and first bound the number
of Python objects parsing would build with :func:`json_value_bound`, which costs three byte
counts instead of a parse.
"""

from __future__ import annotations

import json

from cellseg_d2.data.io import CellDataError

__all__ = ["MAX_JSON_INT_DIGITS", "check_json_values", "json_value_bound", "parse_json"]

#: Integers in a JSON input may have at most this many digits (int64 has 19): a longer one is
#: garbage, and Python would otherwise spend quadratic time on it or refuse it with a traceback.
MAX_JSON_INT_DIGITS = 20


def _bounded_int(text: str) -> int:
    """``parse_int`` hook of :func:`parse_json`: refuse absurdly long integers up front."""
    digits = len(text.lstrip("-"))
    if digits > MAX_JSON_INT_DIGITS:
        raise ValueError(f"a number with {digits} digits (at most {MAX_JSON_INT_DIGITS} allowed)")
    return int(text)


def parse_json(data: str | bytes, source: str) -> object:
    """Parse JSON from an untrusted file into Python values, with a clear error for hostile input.

    Why not bare ``json.loads``: deeply nested arrays end in a ``RecursionError`` and huge
    integers in a ``ValueError`` (or minutes of conversion) far from the file that caused them.
    Here every failure is a :class:`CellDataError` naming ``source``.

    Args:
        data: the file's content.
        source: what to name in messages (the path, or ``zip:member``).

    Raises:
        CellDataError: not UTF-8, not JSON, nested too deeply, or an integer longer than
            :data:`MAX_JSON_INT_DIGITS` digits.
    """
    try:
        return json.loads(data, parse_int=_bounded_int)
    except RecursionError:
        raise CellDataError(f"{source}: JSON nested too deeply to read") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CellDataError(f"{source}: unreadable JSON: {exc}") from exc


def json_value_bound(data: bytes) -> int:
    """An upper bound on the number of values (and object members) a JSON text holds.

    Why: the memory of a parsed document follows its number of values (each a Python object of
    24 to 200 bytes), not its size; ``[0,0,...]`` costs ~100 times its bytes once parsed and
    checked. Knowing the count before parsing lets a reader refuse such a file at the cost of
    its bytes alone.

    How: every value but the first of an array or object follows a comma, and every array or
    object opens with a bracket, so ``commas + brackets + 1`` bounds the count. Commas and
    brackets inside strings are counted too, which only raises the bound (a COCO RLE string
    holds ``[`` about once in 64 characters); nothing can lower it. Three ``bytes.count`` calls:
    ~10 ms per 20 MB.
    """
    return data.count(b",") + data.count(b"[") + data.count(b"{") + 1


def check_json_values(data: bytes, limit: int, source: str, reason: str) -> None:
    """Refuse a JSON text whose :func:`json_value_bound` exceeds ``limit``, before parsing it.

    Args:
        data: the file's content.
        limit: the most values accepted.
        source: the file, named in the message.
        reason: why the limit is what it is, and how to raise it (ends the message).

    Raises:
        CellDataError: naming ``source``, the count and the limit.
    """
    values = json_value_bound(data)
    if values > limit:
        raise CellDataError(
            f"{source}: holds up to {values} JSON values, more than the {limit} allowed "
            f"({reason}); refused before parsing"
        )
