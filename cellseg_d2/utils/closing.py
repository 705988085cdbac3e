"""``with``-support for objects that own a resource and have a ``close()``.

Why one mixin: slide readers and cell stores (and the next resource holders) each need
``with x: ...`` to close on every exit, errors included; writing ``__enter__``/``__exit__`` in
each was the same ten lines every time.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Closing"]


class Closing:
    """Mixin: ``__enter__`` returns the object, ``__exit__`` calls ``self.close()``."""

    def close(self) -> None:
        """Release what the object holds; subclasses override it."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
